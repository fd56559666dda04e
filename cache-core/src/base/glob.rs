//! Redis's glob matching, for the places Redis does not match for us.

/// Redis's glob matching (`stringmatchlen` in util.c), byte for byte: `*`, `?`, `[...]` with
/// `^` and ranges, `\` escaping the next byte. Used where Redis does not match for us (the
/// memory backend, the L1) and to check what a scan returned.
pub(crate) fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Backtracking point of the last `*`: pattern position after it, and the next string
    // position to try. Linear in practice; the classic iterative form of Redis's recursion.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                _ if i < s.len() => {
                    if let Some(next) = match_one(pattern, p, s[i]) {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                _ => {}
            }
        } else if i == s.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more byte, if there is one.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// Matches one pattern element at `p` (not `*`) against byte `c`; the position after the
/// element if it matches.
fn match_one(pattern: &[u8], mut p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => {
            p += 1;
            let not = pattern.get(p) == Some(&b'^');
            if not {
                p += 1;
            }
            let mut matched = false;
            loop {
                match pattern.get(p) {
                    // An unclosed class ends at the end of the pattern, as in Redis.
                    None => {
                        p -= 1;
                        break;
                    }
                    Some(b'\\') if p + 1 < pattern.len() => {
                        p += 1;
                        if pattern[p] == c {
                            matched = true;
                        }
                    }
                    Some(b']') => break,
                    Some(&lo) if pattern.get(p + 1) == Some(&b'-') && p + 2 < pattern.len() => {
                        let hi = pattern[p + 2];
                        let (lo, hi) = if lo > hi { (hi, lo) } else { (lo, hi) };
                        p += 2;
                        if c >= lo && c <= hi {
                            matched = true;
                        }
                    }
                    Some(&b) => {
                        if b == c {
                            matched = true;
                        }
                    }
                }
                p += 1;
            }
            (matched != not).then_some(p + 1)
        }
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b => (b == c).then_some(p + 1),
    }
}
