//! mimalloc's options, set by the binary itself when the process loads.
//!
//! mimalloc reads its `MIMALLOC_*` variables from the environment when it
//! starts, before `main` and so before `.env` is read: a setting there would
//! come too late, and one set only in the Docker image would not reach a
//! `cargo run`. So the defaults this server wants are set in code, from a
//! constructor that runs before the first allocation. Only mimalloc's
//! defaults change: a variable the operator gives still wins.
//!
//! The global allocator itself is chosen in `main.rs` (not in test
//! binaries); this module lives in the library so its tests see the same
//! constructor (rustc links a library's `#[used]` statics into every binary
//! that uses the library, where it touches only mimalloc's option table).

use libmimalloc_sys::{mi_option_set_default, mi_option_t};

/// `mi_option_arena_eager_commit`, which `libmimalloc-sys` has no constant
/// for: its index in `mi_option_e` of the bundled mimalloc, v3 and v2 alike.
pub const ARENA_EAGER_COMMIT: mi_option_t = 4;

/// Arenas commit their memory lazily unless `MIMALLOC_ARENA_EAGER_COMMIT`
/// says otherwise: an idle Socket.IO connection costs ~34 KiB instead of ~44
/// KiB, at no measured CPU cost (BENCHMARKS.md "The allocator, measured
/// again").
extern "C" fn set_defaults() {
    // SAFETY: sets the default of one valid option in mimalloc's option
    // table; called once, from the constructor below, while the process is
    // still single-threaded. An environment value, read by mimalloc when
    // it initialises the option, replaces this default (also when it was
    // read before: `set_default` leaves a value from the environment alone).
    unsafe { mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
}

/// Runs [`set_defaults`] when the process loads. Priority 99 (the one std
/// uses for its own early constructor) sorts before mimalloc's constructor,
/// which initialises its options and can already reserve an arena
/// (`MIMALLOC_RESERVE_OS_MEMORY`); nothing in Rust allocates before either.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00099"]
static SET_DEFAULTS: extern "C" fn() = set_defaults;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use libmimalloc_sys::mi_option_get;

    use super::ARENA_EAGER_COMMIT;

    /// Set for the copy of this test binary that only reports the option.
    const REPORT: &str = "ALLOC_TEST_REPORT_OPTION";

    /// In the copy started by the test below: prints the option's value.
    #[test]
    fn report_arena_eager_commit() {
        if std::env::var_os(REPORT).is_some() {
            // SAFETY: reads a valid option.
            let value = unsafe { mi_option_get(ARENA_EAGER_COMMIT) };
            println!("arena_eager_commit={value}");
        }
    }

    /// The option as this test binary sees it when started with `value`
    /// for `MIMALLOC_ARENA_EAGER_COMMIT` (`None`: not set).
    fn arena_eager_commit_with(value: Option<&str>) -> String {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "alloc::tests::report_arena_eager_commit"])
            .args(["--nocapture", "--test-threads=1"])
            .env(REPORT, "1")
            .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
            .env_remove("MIMALLOC_EAGER_REGION_COMMIT");
        if let Some(value) = value {
            command.env("MIMALLOC_ARENA_EAGER_COMMIT", value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        // libtest prints the test's name on the same line.
        stdout
            .split_once("arena_eager_commit=")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no report in: {stdout}"))
            .to_string()
    }

    #[test]
    fn arenas_commit_lazily_unless_the_environment_says_otherwise() {
        // mimalloc's own default is 2 (eager where the OS overcommits).
        assert_eq!(arena_eager_commit_with(None), "0");
        assert_eq!(arena_eager_commit_with(Some("1")), "1");
        assert_eq!(arena_eager_commit_with(Some("2")), "2");
    }
}
