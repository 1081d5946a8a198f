//! Prompts for ARC test inputs, and reading a grid back out of generated text.

use super::*;

// ---------------------------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------------------------

/// A grid as text: each row its digits, rows joined by `\n` (no trailing newline).
pub fn grid_to_text(grid: &Grid) -> String {
    let mut s = String::with_capacity(grid.len() * (grid.first().map_or(0, Vec::len) + 1));
    for (r, row) in grid.iter().enumerate() {
        if r > 0 {
            s.push('\n');
        }
        s.extend(row.iter().map(|&c| char::from(b'0' + c.min(9))));
    }
    s
}

/// The user-message text asking for the output of `test_input`, after all demonstration pairs.
pub fn build_prompt(task: &ArcTask, test_input: &Grid) -> String {
    let mut s = String::from("Solve this ARC puzzle. Each grid is rows of digits 0-9.\n\n");
    for (i, pair) in task.train.iter().enumerate() {
        let n = i + 1;
        s.push_str(&format!(
            "Example {n} input:\n{}\nExample {n} output:\n{}\n\n",
            grid_to_text(&pair.input),
            grid_to_text(&pair.output)
        ));
    }
    s.push_str(&format!(
        "Test input:\n{}\nTest output:\n",
        grid_to_text(test_input)
    ));
    s
}

/// One unit of work for the engine: one test input of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    /// The task the input belongs to.
    pub task_id: String,
    /// Which test input of the task (0-based).
    pub test_index: usize,
    /// The user-message text (see [`build_prompt`]).
    pub prompt: String,
    /// The expected output, when the data set ships it.
    pub expected: Option<Grid>,
}

/// Every test input of every task, in task order then test order.
pub fn work_items(tasks: &[ArcTask]) -> Vec<WorkItem> {
    tasks
        .iter()
        .flat_map(|task| {
            task.test.iter().enumerate().map(move |(i, case)| WorkItem {
                task_id: task.id.clone(),
                test_index: i,
                prompt: build_prompt(task, &case.input),
                expected: case.output.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing generated text, scoring
// ---------------------------------------------------------------------------------------------

fn is_digit_row(line: &str) -> bool {
    !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
}

/// The first complete grid in generated text, or `None`.
///
/// Each line is trimmed of surrounding whitespace (so `\r\n` endings and indented code blocks
/// work). A *digit line* is a non-empty line of ASCII digits only: `"42"` is one, `"The answer
/// is 42 apples"` and `"0 0 1"` are not. A *block* is a maximal run of consecutive digit lines;
/// any other line (prose, a blank line, a markdown fence ```` ``` ````) ends it.
///
/// Width changes: a block whose lines are not all the same width is ragged and rejected as a
/// whole; no prefix of it is taken, since a malformed answer should not score by accident.
/// The search then goes on to later blocks, so the first *complete* (rectangular) block wins.
pub fn parse_grid(text: &str) -> Option<Grid> {
    let mut block: Vec<&str> = Vec::new();
    // The trailing "" closes a block that runs to the end of the text.
    for line in text.lines().chain(std::iter::once("")) {
        let line = line.trim();
        if is_digit_row(line) {
            block.push(line);
            continue;
        }
        if let Some(first) = block.first() {
            if block.iter().all(|row| row.len() == first.len()) {
                return Some(
                    block
                        .iter()
                        .map(|row| row.bytes().map(|b| b - b'0').collect())
                        .collect(),
                );
            }
            block.clear();
        }
    }
    None
}

/// Exact match: same dimensions and every cell equal.
pub fn exact_match(predicted: &Grid, expected: &Grid) -> bool {
    predicted == expected
}

/// Parses the first grid in `generated` and compares it with `expected`. With no expected output
/// (a hidden test) nothing can be correct.
pub fn score(generated: &str, expected: Option<&Grid>) -> (Option<Grid>, bool) {
    let grid = parse_grid(generated);
    let correct = matches!((&grid, expected), (Some(g), Some(e)) if exact_match(g, e));
    (grid, correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::workload::arc::testdata::*;

    // --- grid parser ---

    #[test]
    fn parses_plain_grid() {
        assert_eq!(
            parse_grid("0012\n3400"),
            Some(vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]])
        );
        assert_eq!(
            parse_grid("0012\r\n3400\r\n"),
            Some(vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]])
        );
        assert_eq!(parse_grid("7"), Some(vec![vec![7]]));
        assert_eq!(
            parse_grid("  12  \n  34\t\n"),
            Some(vec![vec![1, 2], vec![3, 4]])
        );
    }

    #[test]
    fn parses_grid_inside_prose() {
        let text = "Sure! Looking at the examples, the pattern mirrors.\nHere it is:\n\n010\n101\n\nHope this helps.";
        assert_eq!(parse_grid(text), Some(vec![vec![0, 1, 0], vec![1, 0, 1]]));
        // Prose directly above and below, no blank lines.
        assert_eq!(
            parse_grid("Output:\n11\n22\nDone."),
            Some(vec![vec![1, 1], vec![2, 2]])
        );
    }

    #[test]
    fn parses_fenced_grid() {
        assert_eq!(
            parse_grid("```\n123\n456\n```"),
            Some(vec![vec![1, 2, 3], vec![4, 5, 6]])
        );
        assert_eq!(
            parse_grid("The answer:\n```text\n09\n90\n```\nExplanation follows."),
            Some(vec![vec![0, 9], vec![9, 0]])
        );
    }

    #[test]
    fn takes_first_grid_only() {
        assert_eq!(
            parse_grid("12\n34\n\n56\n78"),
            Some(vec![vec![1, 2], vec![3, 4]])
        );
    }

    #[test]
    fn rejects_ragged_block_and_keeps_searching() {
        assert_eq!(parse_grid("123\n45\n678"), None);
        assert_eq!(parse_grid("123\n4567"), None);
        // No prefix of the ragged block is taken; a later complete grid is.
        assert_eq!(
            parse_grid("11\n22\n333\n\nfixed:\n44\n55"),
            Some(vec![vec![4, 4], vec![5, 5]])
        );
    }

    #[test]
    fn no_grid_at_all() {
        assert_eq!(parse_grid(""), None);
        assert_eq!(parse_grid("\n\n  \n"), None);
        assert_eq!(parse_grid("I cannot solve this puzzle."), None);
        assert_eq!(parse_grid("```\n```"), None);
    }

    #[test]
    fn digits_inside_prose_do_not_count() {
        assert_eq!(parse_grid("The answer is 42 apples"), None);
        assert_eq!(parse_grid("Row 1: 0012\nRow 2: 3400"), None);
        assert_eq!(parse_grid("0 0 1 2\n3 4 0 0"), None);
        assert_eq!(parse_grid("[[0,1],[2,3]]"), None);
        assert_eq!(parse_grid("-12"), None);
        // A bare number on its own line is a 1-row grid.
        assert_eq!(
            parse_grid("The answer is:\n42\nThat is all."),
            Some(vec![vec![4, 2]])
        );
        // Non-ASCII digits are not colors.
        assert_eq!(parse_grid("١٢\n٣٤"), None);
    }

    // --- scoring ---

    #[test]
    fn exact_match_scoring() {
        let expected = vec![vec![1, 2], vec![3, 4]];
        assert_eq!(
            score("12\n34", Some(&expected)),
            (Some(expected.clone()), true)
        );
        // One cell off.
        assert!(!score("12\n35", Some(&expected)).1);
        // Right prefix, wrong dimensions.
        assert!(!score("12", Some(&expected)).1);
        assert!(!score("12\n34\n56", Some(&expected)).1);
        assert!(!score("123\n345", Some(&expected)).1);
        // Transposed dims with same cell count.
        assert!(!exact_match(
            &vec![vec![1, 2, 3, 4]],
            &vec![vec![1, 2], vec![3, 4]]
        ));
        // No grid; no expected output.
        assert_eq!(score("nothing", Some(&expected)), (None, false));
        assert_eq!(score("12\n34", None), (Some(expected), false));
    }

    // --- prompt ---

    #[test]
    fn prompt_matches_hand_written_text() {
        let expected = "Solve this ARC puzzle. Each grid is rows of digits 0-9.\n\
                        \n\
                        Example 1 input:\n\
                        01\n\
                        23\n\
                        Example 1 output:\n\
                        32\n\
                        10\n\
                        \n\
                        Example 2 input:\n\
                        5\n\
                        Example 2 output:\n\
                        55\n\
                        \n\
                        Test input:\n\
                        40\n\
                        Test output:\n";
        let task = task_a();
        assert_eq!(build_prompt(&task, &task.test[0].input), expected);
        assert_eq!(
            grid_to_text(&vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]]),
            "0012\n3400"
        );
    }

    #[test]
    fn work_items_cover_every_test_input() {
        let tasks = vec![task_a(), parse_task("bbbb0002", TASK_B).unwrap()];
        let items = work_items(&tasks);
        let keys: Vec<(&str, usize)> = items
            .iter()
            .map(|w| (w.task_id.as_str(), w.test_index))
            .collect();
        assert_eq!(
            keys,
            vec![("aaaa0001", 0), ("bbbb0002", 0), ("bbbb0002", 1)]
        );
        assert_eq!(items[2].expected, None);
        assert!(items[2].prompt.ends_with("Test input:\n77\nTest output:\n"));
    }
}
