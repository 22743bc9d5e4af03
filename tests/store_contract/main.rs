//! The `ConversationStore` contract, written once (`checks`) and run against
//! every backend: SQLite on a temporary file, and MongoDB on a real
//! SecantusDB server (a MongoDB wire-protocol server; `SECANTUSD_BIN` names
//! its binary, `scripts/test.sh` installs it). One server serves the whole
//! test binary, each test in its own database `t_<uuid>`, dropped at the
//! end; the server dies with the test process (see `server.rs`).
//!
//! `mongo_only` covers what only MongoDB has: the original app's validator
//! and documents, sessions, and how an unreachable server is reported.
//!
//! ```sh
//! SECANTUSD_BIN=~/.cache/llm-chat-server/venv/bin/secantusd-py cargo test --test store_contract
//! ```

mod checks;
mod faults;
mod fixture;
mod migrate;
mod mongo_only;
mod server;
mod tokens;

/// One test per check and backend: `sqlite::<check>` and `mongo::<check>`.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = crate::fixture::Fixture::new(crate::fixture::Kind::Sqlite).await;
                    crate::checks::$check(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = crate::fixture::Fixture::new(crate::fixture::Kind::Mongo).await;
                    crate::checks::$check(&fixture).await;
                    fixture.finish().await;
                }
            )*
        }
    };
}

contract!(
    create_load_meta,
    append_order_and_title,
    concurrent_appends,
    reset_empties_everything,
    delete_removes,
    list_order_and_paging,
    summary_set_and_load,
    search_ranks_and_is_scoped,
    every_operation_is_scoped_to_the_owner,
    size_limit_refuses_without_writing,
    export_import_round_trip,
    delete_last_message_removes_only_the_last,
);
