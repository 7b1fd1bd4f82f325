use std::os::unix::fs::symlink;

use super::*;

/// A folder with: a.csv, b.csv, notes.txt, "x y é.csv", daily/2026-11-29/{1.xml,2.xml,skip.txt},
/// daily/empty/ (empty), tree/{f1, sub/f2, hollow/} and the node's .ferry-work/secret.part.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    write("a.csv", b"a");
    write("b.csv", b"bb");
    write("notes.txt", b"n");
    write("x y é.csv", b"unicode");
    write("daily/2026-11-29/1.xml", b"1");
    write("daily/2026-11-29/2.xml", b"22");
    write("daily/2026-11-29/skip.txt", b"s");
    std::fs::create_dir_all(root.join("daily/empty")).expect("mkdir");
    write("tree/f1", b"f1");
    write("tree/sub/f2", b"f2f2");
    std::fs::create_dir_all(root.join("tree/hollow")).expect("mkdir");
    write(".ferry-work/secret.part", b"partial");
    dir
}

fn paths(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn a_star_stays_in_its_folder_and_double_star_goes_down() {
    let dir = folder();
    let found = resolve(dir.path(), "*.csv", MAX_ENTRIES).expect("resolved");
    assert_eq!(paths(&found), ["a.csv", "b.csv", "x y é.csv"]);
    assert_eq!(found[1].size, 2);
    assert!(found[1].modified_ns > 0);
    let found = resolve(dir.path(), "daily/2026-11-??/*.xml", MAX_ENTRIES).expect("resolved");
    assert_eq!(paths(&found), ["daily/2026-11-29/1.xml", "daily/2026-11-29/2.xml"]);
    let found = resolve(dir.path(), "**/*.xml", MAX_ENTRIES).expect("resolved");
    assert_eq!(paths(&found), ["daily/2026-11-29/1.xml", "daily/2026-11-29/2.xml"]);
    let found = resolve(dir.path(), "daily/**", MAX_ENTRIES).expect("resolved");
    assert_eq!(
        paths(&found),
        [
            "daily/2026-11-29",
            "daily/2026-11-29/1.xml",
            "daily/2026-11-29/2.xml",
            "daily/2026-11-29/skip.txt",
            "daily/empty"
        ]
    );
    assert_eq!(found[4].kind, EntryKind::Folder, "an empty folder is part of the set");
    let found = resolve(dir.path(), "{a,b}.csv", MAX_ENTRIES).expect("resolved");
    assert_eq!(paths(&found), ["a.csv", "b.csv"]);
}

#[test]
fn a_folder_name_is_its_whole_tree_kept_below_the_folder() {
    let dir = folder();
    let found = resolve(dir.path(), "tree", MAX_ENTRIES).expect("resolved");
    assert_eq!(paths(&found), ["tree", "tree/f1", "tree/hollow", "tree/sub", "tree/sub/f2"]);
    let kinds: Vec<EntryKind> = found.iter().map(|e| e.kind).collect();
    use EntryKind::{File, Folder};
    assert_eq!(kinds, [Folder, File, Folder, Folder, File]);
    assert_eq!(found[4].size, 4);
    // A plain file name is that file; a missing one is an empty set (the
    // rule's policy says whether that is an error).
    assert_eq!(paths(&resolve(dir.path(), "x y é.csv", MAX_ENTRIES).expect("resolved")), ["x y é.csv"]);
    assert!(resolve(dir.path(), "nothing-here", MAX_ENTRIES).expect("resolved").is_empty());
    assert!(resolve(dir.path(), "*.none", MAX_ENTRIES).expect("resolved").is_empty());
}

#[test]
fn the_nodes_work_folders_are_never_listed() {
    let dir = folder();
    for pattern in ["**", "**/*.part", "*"] {
        let found = resolve(dir.path(), pattern, MAX_ENTRIES).expect("resolved");
        assert!(found.iter().all(|e| !e.path.contains(".ferry")), "{pattern}: {:?}", paths(&found));
    }
    assert!(matches!(resolve(dir.path(), ".ferry-work/*", MAX_ENTRIES), Err(ResolveError::BadPattern { .. })));
}

#[test]
fn patterns_that_climb_or_start_at_the_root_are_refused() {
    let dir = folder();
    for pattern in ["", "../*", "a/../../b", "/etc/*", "daily//x", "daily/", "./a.csv", "a\\*.csv", "x/../*.csv"] {
        match resolve(dir.path(), pattern, MAX_ENTRIES) {
            Err(ResolveError::BadPattern { why, .. }) => assert!(!why.is_empty(), "{pattern}"),
            other => panic!("{pattern:?} should be refused, got {other:?}"),
        }
    }
}

#[test]
fn any_symbolic_link_refuses_the_set_and_names_where_it_leads() {
    let dir = folder();
    let root = dir.path();
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret"), b"s").expect("write");
    for (link, target) in [
        ("tree/alias.csv", root.join("a.csv")),
        ("tree/passwd", PathBuf::from("/etc/passwd")),
        ("tree/out", outside.path().to_owned()),
        ("tree/up", root.join("daily")),
        ("tree/work", root.join(".ferry-work/secret.part")),
    ] {
        symlink(&target, root.join(link)).expect("link");
        let below = format!("{link}/*");
        let inside = format!("{link}/secret");
        for pattern in ["tree", "tree/*", "**", link, below.as_str(), inside.as_str()] {
            match resolve(root, pattern, MAX_ENTRIES) {
                Err(ResolveError::Link { path, why }) => {
                    assert_eq!(path, link, "{pattern}: {why}");
                    assert!(why.contains(&target.display().to_string()), "{why}");
                }
                // A link to a file is no folder to look into: nothing below it.
                Ok(found) if pattern.starts_with(link) && pattern != link && target.is_file() => {
                    assert!(found.is_empty(), "{pattern}: {found:?}")
                }
                other => panic!("{link} -> {} with {pattern}: expected a refusal, got {other:?}", target.display()),
            }
        }
        // A pattern that does not reach the link is not affected.
        assert_eq!(resolve(root, "*.csv", MAX_ENTRIES).expect("resolved").len(), 3);
        std::fs::remove_file(root.join(link)).expect("unlink");
    }
}

#[test]
fn patterns_that_walk_the_same_tree_again_and_again_are_refused_not_walked() {
    let dir = folder();
    let once = resolve_set_walking(dir.path(), &["**".to_string()], 1_000).expect("one walk");
    let walked = once.len() + 1;
    let again: Vec<String> = (0..50).map(|i| if i % 2 == 0 { "**".into() } else { "**/*".into() }).collect();
    match resolve_set_walking(dir.path(), &again, walked * 10) {
        Err(ResolveError::TooMuchWalking { limit }) => assert_eq!(limit, walked * 10),
        other => panic!("50 walks of the same tree within the room of 10: {other:?}"),
    }
    let twice = resolve_set_walking(dir.path(), &again[..2], walked * 10).expect("two walks fit");
    assert_eq!(twice.len(), once.len(), "the same entries");
}

#[test]
fn a_set_over_the_limit_is_refused() {
    let dir = folder();
    assert!(matches!(resolve(dir.path(), "**", 3), Err(ResolveError::TooMany { limit: 3 })));
    assert_eq!(resolve(dir.path(), "*.csv", 3).expect("exactly at the limit").len(), 3);
}

#[test]
fn names_the_pattern_does_not_reach_cannot_fail_it() {
    let dir = folder();
    std::fs::create_dir_all(dir.path().join("deep/er")).expect("mkdir");
    std::fs::write(dir.path().join("deep/er/bad\\name"), b"x").expect("write");
    assert_eq!(paths(&resolve(dir.path(), "*.csv", MAX_ENTRIES).expect("resolved")), ["a.csv", "b.csv", "x y é.csv"]);
    match resolve(dir.path(), "deep/**", MAX_ENTRIES) {
        Err(ResolveError::BadName { path, .. }) => assert_eq!(path, "deep/er/bad\\name"),
        other => panic!("a name with a backslash in the set: {other:?}"),
    }
}

#[test]
fn a_set_sends_its_files_and_only_its_empty_folders() {
    let dir = folder();
    let entries = resolve(dir.path(), "**", MAX_ENTRIES).expect("resolves");
    let sent = entries_to_send(entries);
    let folders: Vec<&str> = sent.iter().filter(|e| e.kind == EntryKind::Folder).map(|e| e.path.as_str()).collect();
    assert_eq!(folders, ["daily/empty/", "tree/hollow/"], "only folders with nothing below them, as `path/`");
    assert!(sent.iter().filter(|e| e.kind == EntryKind::Folder).all(|e| e.size == 0));
    assert!(sent.iter().any(|e| e.path == "tree/sub/f2"), "files are all there");
    assert!(!sent.iter().any(|e| e.path == "tree/" || e.path == "tree"), "a folder holding files arrives with them");
    let mut sorted = sent.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(sent, sorted, "in path order");
    // Only nested empty folders: the deepest is sent, its parents arrive with it.
    let nested = vec![
        Entry { path: "x".into(), kind: EntryKind::Folder, size: 0, modified_ns: 1 },
        Entry { path: "x/y".into(), kind: EntryKind::Folder, size: 0, modified_ns: 1 },
    ];
    assert_eq!(paths(&entries_to_send(nested)), ["x/y/"]);
}

#[test]
fn a_long_pattern_is_shown_by_its_first_lines_within_the_limit() {
    assert_eq!(shown_pattern("daily/**"), "daily/**", "short: whole");
    let list: Vec<String> = (0..2000).map(|i| format!("folder/file-{i:05}.csv")).collect();
    let shown = shown_pattern(&list.join("\n"));
    assert!(shown.len() <= SHOWN_PATTERN_BYTES, "{} bytes", shown.len());
    assert!(shown.starts_with("folder/file-00000.csv\nfolder/file-00001.csv\n"));
    let taken = shown.lines().count() - 1;
    assert!(shown.ends_with(&format!("… ({} more paths)", 2000 - taken)), "{}", &shown[shown.len() - 40..]);
    // One line longer than the limit, with a character across the cut.
    let long = "é".repeat(SHOWN_PATTERN_BYTES);
    let shown = shown_pattern(&long);
    assert!(shown.len() <= SHOWN_PATTERN_BYTES && shown.ends_with("… (0 more paths)"), "{}", shown.len());
}
