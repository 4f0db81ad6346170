//! Conversation ids come from clients: parsing must never panic, and whatever parses
//! must name valid ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::ids::{ConvRef, direct_conv, is_valid_id};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match ConvRef::parse(s) {
        Some(ConvRef::Direct(a, b)) => {
            assert!(is_valid_id(a) && is_valid_id(b) && a <= b);
            assert_eq!(direct_conv(b, a), s);
        }
        Some(ConvRef::Group(name)) => assert!(is_valid_id(name)),
        Some(ConvRef::Service { shop, customer }) => {
            assert!(is_valid_id(shop) && is_valid_id(customer));
        }
        None => {}
    }
});
