//! The `ConversationStore` contract (`checks`), the `AccountStore`
//! contract (`accounts`), the `TokenStore` (`tokens`) and `UsageStore`
//! (`usage`) contracts, the `ShareStore` contract (`shares`), the session stores' signing out everywhere
//! (`sessions`), each written once and run against every backend:
//! SQLite on a temporary file, and MongoDB on a real SecantusDB server (a
//! MongoDB wire-protocol server; `SECANTUSD_BIN` names its binary,
//! `scripts/test.sh` installs it). One server serves the whole test binary,
//! each test in its own database `t_<uuid>`, dropped at the end; the server
//! dies with the test process (see `server.rs`).
//!
//! `mongo_only` covers what only MongoDB has: the original app's validator
//! and documents, the first-account marker, sessions, and how an
//! unreachable server is reported.
//!
//! ```sh
//! SECANTUSD_BIN=~/.cache/llm-chat-server/venv/bin/secantusd-py cargo test --test store_contract
//! ```

mod accounts;
mod branches;
mod checks;
mod faults;
mod fixture;
mod identities;
mod migrate;
mod models;
mod mongo_only;
mod server;
mod sessions;
mod shares;
mod tokens;
mod usage;

/// One test per check and backend: `sqlite::<check>` and `mongo::<check>`,
/// each check named with the module that holds it.
macro_rules! contract {
    ($($module:ident: [$($check:ident),* $(,)?]),* $(,)?) => {
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = crate::fixture::Fixture::new(crate::fixture::Kind::Sqlite).await;
                    crate::$module::$check(&fixture).await;
                    fixture.finish().await;
                }
            )*)*
        }
        mod mongo {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let fixture = crate::fixture::Fixture::new(crate::fixture::Kind::Mongo).await;
                    crate::$module::$check(&fixture).await;
                    fixture.finish().await;
                }
            )*)*
        }
    };
}

contract!(
    checks: [
        create_load_meta,
        append_order_and_title,
        concurrent_appends,
        reset_empties_everything,
        delete_removes,
        list_order_and_paging,
        summary_set_and_load,
        search_ranks_and_is_scoped,
        scores_ignore_other_users_text,
        searches_and_appends_interleave,
        every_operation_is_scoped_to_the_owner,
        size_limit_refuses_without_writing,
        the_cap_counts_messages_and_bytes_and_refuses_atomically,
        a_page_of_the_history_is_read_from_the_end_backwards,
        export_import_round_trip,
        delete_last_message_removes_only_the_last,
        every_write_moves_the_revision_on,
    ],
    branches: [
        forks_set_the_suffix_aside_and_switches_bring_siblings_back,
        a_summary_before_the_branch_point_is_kept,
        the_cap_counts_the_branches_set_aside,
        an_import_carries_its_branches_once_and_the_cap_counts_them,
    ],
    accounts: [
        the_first_account_is_the_admin_and_later_ones_are_not,
        first_only_signs_up_the_first_account_then_is_closed_and_stores_nothing,
        a_taken_email_is_reported_and_changes_nothing,
        a_second_account_with_a_user_id_in_use_is_an_error_not_a_taken_email,
        has_accounts_is_false_until_the_first_sign_up,
        unknown_emails_and_user_ids_find_no_account,
        set_password_replaces_the_hash_of_an_existing_account_only,
        transfer_moves_conversations_with_messages_and_search_and_counts_them,
        first_only_sign_ups_at_once_on_two_stores_make_exactly_one_account_the_admin,
        open_sign_ups_at_once_on_two_stores_all_succeed_with_exactly_one_admin,
        imported_accounts_keep_every_field_once_and_close_first_only_sign_up,
        accounts_are_listed_oldest_first_in_pages,
        disabling_and_enabling_changes_that_account_only,
        admin_rights_are_given_and_taken_for_that_account_only,
    ],
    identities: [
        a_new_identity_gets_an_account_without_a_password_and_keeps_it,
        a_verified_email_links_the_existing_account_an_unverified_one_does_not,
        admin_is_set_when_asked_and_kept_otherwise,
        an_identity_signing_in_at_once_on_two_stores_gets_one_account,
    ],
    models: [
        a_conversation_keeps_its_settings_apart_from_its_history,
        settings_are_replaced_for_the_owner_only,
        a_settings_change_changes_only_the_fields_it_names,
        settings_survive_export_and_import,
        presets_are_made_listed_found_and_deleted_per_user,
        presets_stop_at_the_per_user_limit,
        presets_are_copied_once_with_every_field,
    ],
    sessions: [
        an_accounts_sessions_end_together_and_stay_ended,
        a_session_deleted_or_cycled_leaves_the_accounts_other_sessions_alone,
        a_save_never_brings_back_a_deleted_session_and_a_touch_moves_only_the_expiry,
    ],
);
