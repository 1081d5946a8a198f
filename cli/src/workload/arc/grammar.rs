//! The grammar of an ARC answer: one grid in the prompt's own notation (see
//! [`grid_to_text`](super::grid_to_text)), as a regex for the constraint compiler
//! ([`qwenrt::engine::constraint::Grammars::regex`]).
//!
//! An answer is 1 to [`MAX_GRID_SIDE`] rows of 1 to [`MAX_GRID_SIDE`] digits `0-9`, every row
//! as wide as the first, rows joined by `\n`. What lets the model stop: after any complete row
//! the grammar is complete, so the end of turn is allowed there; the model may also close the
//! grid with a newline or a blank line (`\n\n`, how the prompt separates a grid from what
//! follows it), after which only the end of turn is allowed. Nothing else can follow a grid,
//! so an answer that is not a grid cannot be written, and after the 30th row only the close
//! and the end of turn remain.

/// The most rows, and the most columns, of an ARC grid.
pub const MAX_GRID_SIDE: usize = 30;

/// The regex of one answer (see the module docs): one alternative per width, so that every
/// row after the first has the first one's width.
pub fn grid_regex() -> String {
    let more = MAX_GRID_SIDE - 1;
    let widths: Vec<String> = (1..=MAX_GRID_SIDE)
        .map(|w| format!("[0-9]{{{w}}}(\\n[0-9]{{{w}}}){{0,{more}}}"))
        .collect();
    format!("({})(\\n\\n?)?", widths.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The regex checked with a regex engine apart from the constraint compiler.
    fn full_match(text: &str) -> bool {
        let re = regex::Regex::new(&format!("^(?:{})$", grid_regex())).unwrap();
        re.is_match(text)
    }

    fn grid(rows: usize, cols: usize) -> String {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| char::from(b'0' + ((r * 7 + c) % 10) as u8))
                    .collect()
            })
            .collect::<Vec<String>>()
            .join("\n")
    }

    #[test]
    fn matches_grids_and_nothing_else() {
        for (rows, cols) in [(1, 1), (1, 30), (30, 1), (30, 30), (3, 7), (29, 2)] {
            let g = grid(rows, cols);
            assert!(full_match(&g), "{rows}x{cols}");
            assert!(full_match(&format!("{g}\n")), "{rows}x{cols} + newline");
            assert!(
                full_match(&format!("{g}\n\n")),
                "{rows}x{cols} + blank line"
            );
            assert!(
                !full_match(&format!("{g}\n\n\n")),
                "{rows}x{cols} + two blank lines"
            );
        }
        for bad in [
            "",
            "\n",
            "\n12",
            "12\n3",
            "12\n345",
            "1 2",
            "12\n\n34",
            "12\nab",
            "```\n12\n```",
            "12.",
        ] {
            assert!(!full_match(bad), "{bad:?}");
        }
        assert!(!full_match(&grid(1, 31)), "31 columns");
        assert!(!full_match(&grid(31, 2)), "31 rows");
    }
}
