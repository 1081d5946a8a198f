//! Ending an ARC answer once its grid is complete.
//!
//! The model tends to go on after its grid (an explanation, another grid). [`GridStop`] watches
//! the generated text as it streams and says when the first complete grid is over: a block of
//! digit lines of one width (as [`parse_grid`](super::parse_grid) reads them) followed by a
//! line that is not a digit line. Stopping there changes nothing about the score, because
//! [`parse_grid`](super::parse_grid) takes the first such block and ignores what follows.

/// A streaming detector of the end of the first complete grid. Fixed size; allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct GridStop {
    /// Width of the block of digit lines so far (0: no block).
    width: usize,
    /// Whether the block so far has lines of different widths (then it is no grid).
    ragged: bool,
    /// The current line: digits seen after leading whitespace, and whether anything else
    /// (non-whitespace, non-digit) has been seen, which decides it is not a digit line.
    digits: usize,
    trailing_space: bool,
    other: bool,
    done: bool,
}

impl GridStop {
    /// A detector for a fresh answer.
    pub fn new() -> GridStop {
        GridStop::default()
    }

    /// Feeds the next piece of generated text; returns true once the first complete grid is
    /// over (and from then on).
    pub fn push(&mut self, text: &str) -> bool {
        for c in text.chars() {
            if self.done {
                break;
            }
            if c == '\n' {
                self.end_line();
            } else if c.is_ascii_digit() && !self.trailing_space && !self.other {
                self.digits += 1;
            } else if c.is_whitespace() {
                // whitespace before the digits is trimmed; after them, only more whitespace
                // may follow on a digit line
                if self.digits > 0 {
                    self.trailing_space = true;
                }
            } else {
                self.other = true;
            }
            // A line that already holds something other than digits is no row: a complete
            // block above it is the answer.
            if self.other && self.width > 0 && !self.ragged {
                self.done = true;
            }
        }
        self.done
    }

    /// Whether the first complete grid is over.
    pub fn done(&self) -> bool {
        self.done
    }

    fn end_line(&mut self) {
        let digit_line = self.digits > 0 && !self.other;
        if digit_line {
            if self.width == 0 {
                self.width = self.digits;
                self.ragged = false;
            } else if self.digits != self.width {
                self.ragged = true;
            }
        } else if self.width > 0 {
            if !self.ragged {
                self.done = true;
            }
            self.width = 0;
            self.ragged = false;
        }
        self.digits = 0;
        self.trailing_space = false;
        self.other = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_grid;
    use super::*;

    /// The text up to where the detector stops, fed in pieces of `piece` chars.
    fn stop_point(text: &str, piece: usize) -> Option<usize> {
        let mut g = GridStop::new();
        let chars: Vec<char> = text.chars().collect();
        let mut at = 0;
        for chunk in chars.chunks(piece) {
            let s: String = chunk.iter().collect();
            for (i, c) in s.chars().enumerate() {
                if g.push(&c.to_string()) {
                    return Some(at + i + 1);
                }
            }
            at += chunk.len();
        }
        None
    }

    #[test]
    fn stops_after_the_first_complete_grid() {
        let cases: &[(&str, Option<&str>)] = &[
            ("012\n345\n\nThe pattern is", Some("012\n345\n\n")),
            ("```\n012\n345\n```\nmore", Some("```\n012\n345\n`")),
            ("Here:\n  12\n  34\nDone", Some("Here:\n  12\n  34\nD")),
            // a ragged block is no grid: the search goes on to the next block
            ("12\n345\n\n67\n89\nx", Some("12\n345\n\n67\n89\nx")),
            // "42 apples" is not a digit line, and ends the block above it
            ("11\n22\n42 apples", Some("11\n22\n42 a")),
            // still inside the grid, or no grid yet
            ("012\n345\n678", None),
            ("no grid here\n\n", None),
            ("0 1\n2 3\n", None),
        ];
        for &(text, want) in cases {
            for piece in [1, 3, 64] {
                let got = stop_point(text, piece).map(|n| text.chars().take(n).collect::<String>());
                assert_eq!(got.as_deref(), want, "{text:?} in pieces of {piece}");
            }
            // stopping never changes the grid that is scored
            if let Some(prefix) = want {
                assert_eq!(parse_grid(prefix), parse_grid(text), "{text:?}");
                assert!(parse_grid(prefix).is_some());
            }
        }
    }
}
