//! Unit tests of the arm64 VM run: reading its console, and base64.

use super::*;

#[test]
fn console_parts_are_read_between_markers_among_other_lines() {
    let console = "\
Booting Linux\n@@gotrace kernel 6.1.0-56-arm64 aarch64, 2 CPUs\n@@gotrace begin go1.21-default-exact report\n\
{\"mode\":\n\"exact\"}\n\n@@gotrace end go1.21-default-exact report\nnoise\n\
@@gotrace status go1.21-default-exact 0\n@@gotrace status go1.21-pie-exact 1\n@@gotrace done\n";
    let outputs = parse_console(console);
    assert_eq!(outputs.kernel, "6.1.0-56-arm64 aarch64, 2 CPUs");
    let report = &outputs.parts[&("go1.21-default-exact".to_owned(), "report".to_owned())];
    assert_eq!(report, "{\"mode\":\n\"exact\"}\n\n");
    assert_eq!(outputs.statuses["go1.21-default-exact"], 0);
    assert_eq!(outputs.statuses["go1.21-pie-exact"], 1);
    assert!(outputs.done);
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    assert_eq!(decode_base64("aGk=").as_deref(), Some(&b"hi"[..]));
    assert_eq!(decode_base64("aGV5").as_deref(), Some(&b"hey"[..]));
    assert_eq!(
        decode_base64("H4sIAA==").as_deref(),
        Some(&[0x1f, 0x8b, 0x08, 0x00][..])
    );
    assert_eq!(decode_base64("aGk"), None);
    assert_eq!(decode_base64("a*k="), None);
}

#[test]
fn a_console_cut_short_is_not_done() {
    let outputs = parse_console("@@gotrace begin a report\n{\n");
    assert!(!outputs.done);
    assert!(outputs.parts.is_empty());
}
