//! The sensitive-word filter: multi-pattern matching over every string of a body.
//!
//! Matching ignores case and full-width/half-width forms: both the words and the text
//! are normalized char by char (full-width ASCII forms U+FF01–FF5E and the ideographic
//! space fold to ASCII, then to lower case), and because each char maps to exactly one
//! char, a match in the normalized text names the same chars in the original. `mask`
//! replaces each matched char with `*`; `reject` refuses the message.

use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

pub use crate::config::WordsPolicy;

/// A compiled word list and what to do on a match.
#[derive(Debug, Clone)]
pub struct WordFilter {
    matcher: Option<AhoCorasick>,
    policy: WordsPolicy,
    words: usize,
}

/// A body refused under the `reject` policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message contains a blocked word")]
pub struct Blocked;

/// Folds one char: full-width forms to ASCII, then to lower case when that is one char.
fn fold(c: char) -> char {
    let c = match c {
        '\u{3000}' => ' ',
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    };
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Why a word list could not be put in force. The source's text is part of the
/// message because the message is all that reaches the admin (the API's `bad_request`
/// answer, the SIGHUP log line); the source stays attached for code that wants it.
#[derive(Debug, thiserror::Error)]
pub enum WordsError {
    /// The words file could not be read (missing, unreadable, not UTF-8).
    #[error("reading words file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read's error.
        source: std::io::Error,
    },
    /// The matcher could not be built from the words (e.g. too many of them).
    #[error("building the word matcher: {0}")]
    Build(#[source] aho_corasick::BuildError),
}

impl WordFilter {
    /// A filter that matches nothing.
    pub fn empty(policy: WordsPolicy) -> Self {
        Self {
            matcher: None,
            policy,
            words: 0,
        }
    }

    /// A filter of `words` (blank entries are skipped).
    pub fn new<I, S>(words: I, policy: WordsPolicy) -> Result<Self, WordsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let folded: Vec<String> = words
            .into_iter()
            .map(|w| w.as_ref().trim().chars().map(fold).collect::<String>())
            .filter(|w| !w.is_empty())
            .collect();
        if folded.is_empty() {
            return Ok(Self::empty(policy));
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&folded)
            .map_err(WordsError::Build)?;
        Ok(Self {
            matcher: Some(matcher),
            policy,
            words: folded.len(),
        })
    }

    /// A filter of the words in `path`, one per line, UTF-8.
    pub fn from_file(path: &Path, policy: WordsPolicy) -> Result<Self, WordsError> {
        let text = std::fs::read_to_string(path).map_err(|source| WordsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.lines(), policy)
    }

    /// How many words it matches.
    pub fn len(&self) -> usize {
        self.words
    }

    /// Whether it matches nothing.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// The policy.
    pub fn policy(&self) -> WordsPolicy {
        self.policy
    }

    /// Applies the filter to every string in `body`: masks in place, or refuses.
    /// Returns whether anything was masked.
    pub fn apply(&self, body: &mut Value) -> Result<bool, Blocked> {
        let Some(matcher) = &self.matcher else {
            return Ok(false);
        };
        match self.policy {
            WordsPolicy::Reject => {
                if any_string(body, &mut |s| matches(matcher, s)) {
                    Err(Blocked)
                } else {
                    Ok(false)
                }
            }
            WordsPolicy::Mask => Ok(mask_strings(body, matcher)),
        }
    }
}

fn matches(matcher: &AhoCorasick, s: &str) -> bool {
    let folded: String = s.chars().map(fold).collect();
    matcher.is_match(&folded)
}

fn any_string(v: &Value, f: &mut impl FnMut(&str) -> bool) -> bool {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().any(|i| any_string(i, f)),
        Value::Object(map) => map.values().any(|i| any_string(i, f)),
        _ => false,
    }
}

fn mask_strings(v: &mut Value, matcher: &AhoCorasick) -> bool {
    match v {
        Value::String(s) => match mask(matcher, s) {
            Some(masked) => {
                *s = masked;
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, i| mask_strings(i, matcher) | changed),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, i| mask_strings(i, matcher) | changed),
        _ => false,
    }
}

/// `s` with every char inside any (overlapping) match replaced by `*`; `None` when
/// nothing matched.
fn mask(matcher: &AhoCorasick, s: &str) -> Option<String> {
    let mut folded = String::with_capacity(s.len());
    // Byte offset in `folded` of each char, to turn match offsets into char indices.
    let mut starts = Vec::with_capacity(s.len());
    for c in s.chars() {
        starts.push(folded.len());
        folded.push(fold(c));
    }
    let mut hit = vec![false; starts.len()];
    let mut any = false;
    for m in matcher.find_overlapping_iter(&folded) {
        let first = starts.partition_point(|&b| b < m.start());
        let end = starts.partition_point(|&b| b < m.end());
        hit[first..end].iter_mut().for_each(|h| *h = true);
        any = true;
    }
    any.then(|| {
        s.chars()
            .zip(hit)
            .map(|(c, h)| if h { '*' } else { c })
            .collect()
    })
}

/// The node's current filter, replaceable at run time (SIGHUP, `PUT /admin/v1/words`).
/// A `std::sync::RwLock` around an `Arc`: a send clones the `Arc` under a short read
/// lock and filters without holding it.
#[derive(Debug)]
pub struct Words {
    current: std::sync::RwLock<std::sync::Arc<WordFilter>>,
    file: Option<std::path::PathBuf>,
}

impl Words {
    /// Loads `file` (when given) with `policy`.
    pub fn load(file: Option<&Path>, policy: WordsPolicy) -> Result<Self, WordsError> {
        let filter = match file {
            Some(f) => WordFilter::from_file(f, policy)?,
            None => WordFilter::empty(policy),
        };
        Ok(Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(filter)),
            file: file.map(Path::to_owned),
        })
    }

    /// The filter in force.
    pub fn get(&self) -> std::sync::Arc<WordFilter> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `filter` in force.
    pub fn set(&self, filter: WordFilter) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(filter);
    }

    /// Reloads the words file, keeping the policy; without a file there is nothing to do.
    pub fn reload(&self) -> Result<usize, WordsError> {
        let Some(file) = &self.file else {
            return Ok(self.get().len());
        };
        let filter = WordFilter::from_file(file, self.get().policy())?;
        let n = filter.len();
        self.set(filter);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(policy: WordsPolicy) -> WordFilter {
        WordFilter::new(["傻瓜", "SPAM", "ab", "bc", "  ", ""], policy).unwrap()
    }

    #[test]
    fn folding() {
        for (c, f) in [
            ('Ａ', 'a'),
            ('ｚ', 'z'),
            ('１', '1'),
            ('\u{3000}', ' '),
            ('É', 'é'),
            ('傻', '傻'),
        ] {
            assert_eq!(fold(c), f, "{c}");
        }
        // İ lowercases to two chars; it is kept as is so offsets stay aligned.
        assert_eq!(fold('İ'), 'İ');
    }

    #[test]
    fn masks_cjk_upper_case_full_width_and_overlaps() {
        let f = filter(WordsPolicy::Mask);
        assert_eq!(f.len(), 4);
        for (text, masked) in [
            ("你是傻瓜吗", "你是**吗"),
            ("no spam here", "no **** here"),
            ("no SpAm here", "no **** here"),
            ("ｓｐａｍ!", "****!"),
            ("abc", "***"),
            ("clean", "clean"),
            ("", ""),
        ] {
            let mut body = json!({"text": text, "n": 1});
            let changed = f.apply(&mut body).unwrap();
            assert_eq!(body["text"], masked, "{text}");
            assert_eq!(changed, text != masked);
        }
    }

    #[test]
    fn walks_every_string_of_the_body() {
        let f = filter(WordsPolicy::Mask);
        let mut body = json!({"a": ["x", {"b": "SPAM"}], "c": "傻瓜", "spam": 3});
        assert!(f.apply(&mut body).unwrap());
        assert_eq!(
            body,
            json!({"a": ["x", {"b": "****"}], "c": "**", "spam": 3})
        );
    }

    #[test]
    fn reject_refuses_and_leaves_clean_bodies_alone() {
        let f = filter(WordsPolicy::Reject);
        assert_eq!(f.apply(&mut json!(["ok", "傻瓜"])), Err(Blocked));
        assert_eq!(f.apply(&mut json!("Ｓpam")), Err(Blocked));
        let mut clean = json!({"t": "hello"});
        assert_eq!(f.apply(&mut clean), Ok(false));
        assert_eq!(clean, json!({"t": "hello"}));
    }

    #[test]
    fn an_unreadable_words_file_names_the_file_and_keeps_the_io_error() {
        use std::error::Error as _;
        let path = Path::new("/nonexistent/words.txt");
        let e = WordFilter::from_file(path, WordsPolicy::Mask).unwrap_err();
        assert!(matches!(e, WordsError::Read { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("reading words file /nonexistent/words.txt: "),
            "{e}"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn empty_filters_match_nothing() {
        let f = WordFilter::new(Vec::<String>::new(), WordsPolicy::Reject).unwrap();
        assert!(f.is_empty());
        assert_eq!(f.apply(&mut json!("anything")), Ok(false));
    }
}
