//! Any bytes a WebSocket client sends must decode to a frame or fail cleanly, and a
//! decoded frame must survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = serde_json::from_slice::<ClientFrame>(data) {
        let again = serde_json::to_vec(&frame).expect("a decoded frame encodes");
        let back: ClientFrame = serde_json::from_slice(&again).expect("and decodes again");
        assert_eq!(back, frame);
    }
});
