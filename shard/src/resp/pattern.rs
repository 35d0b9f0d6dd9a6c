//! [`matches`]: Redis's glob-style patterns (`SCAN ... MATCH`).
//!
//! `*` matches any run of bytes, `?` one byte, `[abc]`, `[a-z]` and `[^a]` a class of bytes, and
//! `\` takes the next byte literally. Matching backtracks only to the last `*`, so a pattern costs
//! at most its length times the key's.

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut at_pattern, mut at_key) = (0, 0);
    // Where to resume after the last `*`: the pattern just past it, and the key byte it now eats.
    let mut star: Option<(usize, usize)> = None;
    while at_key < key.len() {
        if at_pattern < pattern.len() {
            match pattern[at_pattern] {
                b'*' => {
                    star = Some((at_pattern + 1, at_key));
                    at_pattern += 1;
                    continue;
                }
                b'?' => {
                    at_pattern += 1;
                    at_key += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, at_pattern, key[at_key]) {
                        if matched {
                            at_pattern = next;
                            at_key += 1;
                            continue;
                        }
                    } else if key[at_key] == b'[' {
                        // An unclosed class is a literal bracket.
                        at_pattern += 1;
                        at_key += 1;
                        continue;
                    }
                }
                b'\\' if at_pattern + 1 < pattern.len() => {
                    if pattern[at_pattern + 1] == key[at_key] {
                        at_pattern += 2;
                        at_key += 1;
                        continue;
                    }
                }
                literal => {
                    if literal == key[at_key] {
                        at_pattern += 1;
                        at_key += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((resume_pattern, eaten)) => {
                star = Some((resume_pattern, eaten + 1));
                at_pattern = resume_pattern;
                at_key = eaten + 1;
            }
            None => return false,
        }
    }
    pattern[at_pattern..].iter().all(|&byte| byte == b'*')
}

/// Whether `byte` is in the class opening at `pattern[open]` (a `[`), and where the pattern
/// continues after it; `None` when the class is not closed.
fn class(pattern: &[u8], open: usize, byte: u8) -> Option<(bool, usize)> {
    let mut at = open + 1;
    let negated = pattern.get(at) == Some(&b'^');
    if negated {
        at += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &current = pattern.get(at)?;
        if current == b']' && !first {
            return Some((matched != negated, at + 1));
        }
        first = false;
        if current == b'\\' && at + 1 < pattern.len() {
            matched |= pattern[at + 1] == byte;
            at += 2;
        } else if pattern.get(at + 1) == Some(&b'-') && pattern.get(at + 2).is_some_and(|&end| end != b']') {
            let (low, high) = (current.min(pattern[at + 2]), current.max(pattern[at + 2]));
            matched |= (low..=high).contains(&byte);
            at += 3;
        } else {
            matched |= current == byte;
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_like_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("user:*", "user:42", true),
            ("user:*", "order:42", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("h[a-c]llo", "hdllo", false),
            ("*:*:end", "a:b:c:end", true),
            ("*:*:end", "a:end", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("[", "[", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern.as_bytes(), key.as_bytes()), *expected, "{pattern} against {key}");
        }
    }
}
