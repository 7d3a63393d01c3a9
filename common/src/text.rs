//! Free text from callers: bounded in length, and free of characters that
//! change how it reads or where it ends. A one-line field holds no control
//! or format characters (bidi overrides, zero-width characters) and no
//! line or paragraph separators; a multi-line field may hold `\n` and `\t`
//! and nothing else of those. Rejections never repeat the text.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use crate::ids::Invalid;

/// Checks a one-line text field of at most `max` characters.
pub fn one_line(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    check(field, value, max, false)
}

/// Checks a multi-line text field of at most `max` characters.
pub fn multi_line(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    check(field, value, max, true)
}

fn check(field: &'static str, value: &str, max: usize, multiline: bool) -> Result<(), Invalid> {
    if value.chars().count() > max {
        return Err(Invalid::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    let hidden = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::Surrogate
                | GeneralCategory::PrivateUse
                | GeneralCategory::Unassigned
        )
    };
    if let Some(c) = value
        .chars()
        .find(|&c| hidden(c) && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(Invalid::new(
            field,
            format!(
                "contains U+{:04X}, a control, format or separator character",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_text_refuses_line_breaks_multi_line_allows_them() {
        assert!(one_line("address", "12 Gangnam-daero", 300).is_ok());
        assert!(one_line("address", "line\nbreak", 300).is_err());
        assert!(one_line("address", "bell\u{7}", 300).is_err());
        assert!(multi_line("note", "line\nbreak\tand tab", 1000).is_ok());
        assert!(multi_line("note", "carriage\rreturn", 1000).is_err());
        assert!(one_line("address", &"x".repeat(301), 300).is_err());
        assert!(one_line("address", &"가".repeat(300), 300).is_ok());
    }

    #[test]
    fn bidi_overrides_zero_width_and_separators_are_refused_everywhere() {
        for hidden in [
            '\u{202E}', '\u{202A}', '\u{2066}', '\u{200B}', '\u{200D}', '\u{FEFF}', '\u{2028}',
            '\u{2029}', '\u{E000}',
        ] {
            let text = format!("12 Gangnam{hidden}-daero");
            assert!(
                one_line("address", &text, 300).is_err(),
                "U+{:04X}",
                u32::from(hidden)
            );
            assert!(
                multi_line("note", &text, 300).is_err(),
                "U+{:04X}",
                u32::from(hidden)
            );
        }
        let refused = one_line("address", "evil\u{202E}txt.exe", 300).err();
        assert!(refused.is_some_and(|e| e.reason.contains("U+202E") && !e.reason.contains("evil")));
        // Scripts and emoji are text, not tricks.
        assert!(one_line("address", "서울 강남대로 12 🧹 café", 300).is_ok());
    }
}
