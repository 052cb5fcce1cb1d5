//! Whether the binaries' plain log lines are coloured: one rule for the server and the
//! operator.

use std::io::IsTerminal;

/// Whether plain log lines get ANSI colours: only on a terminal (never in a file, a pipe or a
/// container log), and never when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// [`use_colour`] for logs written to this process's stderr.
pub fn stderr_colour() -> bool {
    // var_os: a value that is not UTF-8 is still set (and turns colour off).
    let no_color = std::env::var_os("NO_COLOR").map(|v| v.to_string_lossy().into_owned());
    use_colour(std::io::stderr().is_terminal(), no_color.as_deref())
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some(""), false),
            (false, Some("1"), false),
        ];
        for (is_terminal, no_color, want) in cases {
            assert_eq!(
                use_colour(is_terminal, no_color),
                want,
                "is_terminal={is_terminal} NO_COLOR={no_color:?}"
            );
        }
    }
}
