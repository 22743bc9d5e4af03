//! Upload checks: file names, extensions, sizes, text. Pure functions; the
//! route is `http/files.rs`.

/// The base name of an uploaded file, without any folder part or control
/// characters (browsers may send a full path). `None` when nothing is left.
pub fn clean_file_name(raw: &str) -> Option<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Whether the name's extension is in the allowed list (case-insensitive).
pub fn extension_allowed(name: &str, allowed: &[String]) -> bool {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            allowed.iter().any(|a| a.eq_ignore_ascii_case(ext))
        }
        _ => false,
    }
}

/// The text of an upload; a UTF-8 byte-order mark is dropped.
pub fn decode_text(bytes: Vec<u8>) -> Option<String> {
    let mut text = String::from_utf8(bytes).ok()?;
    if text.starts_with('\u{feff}') {
        text.drain(..3);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_folders_and_hidden_dots() {
        assert_eq!(
            clean_file_name("../../etc/passwd.txt").as_deref(),
            Some("passwd.txt")
        );
        assert_eq!(
            clean_file_name("C:\\Users\\me\\notes.md").as_deref(),
            Some("notes.md")
        );
        assert_eq!(clean_file_name("..").as_deref(), None);
        assert_eq!(clean_file_name("").as_deref(), None);
    }

    #[test]
    fn extensions_are_checked_case_insensitively() {
        let allowed = vec!["txt".to_string(), "md".to_string()];
        assert!(extension_allowed("a.TXT", &allowed));
        assert!(!extension_allowed("a.txt.exe", &allowed));
        assert!(!extension_allowed("txt", &allowed));
    }

    #[test]
    fn text_must_be_utf8_and_loses_its_bom() {
        assert_eq!(
            decode_text(b"\xef\xbb\xbfhi".to_vec()).as_deref(),
            Some("hi")
        );
        assert!(decode_text(vec![0xff, 0xfe, 0x00]).is_none());
    }
}
