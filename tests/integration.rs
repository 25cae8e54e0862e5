//! The integration tests, built as one binary. Every test talks to a real Dovecot on
//! loopback (TLS, XOAUTH2 validated by the test identity provider) and runs the real
//! `mailsync` binary; every test whose outcome can depend on the server runs on both
//! server profiles. The exception is `layout`, which reads the source for import
//! cycles.

mod support;

mod bad_input;
mod completions;
mod connect;
mod crash;
mod daemon;
mod exchange;
mod hostile;
mod hostile_idp;
mod layout;
mod pull;
mod secrets;
mod send;
mod session;
mod stop;
mod token_cache;
mod two_way;

/// Defines `NAME::full` and `NAME::exchange` tests running `async fn NAME(Profile)`.
#[macro_export]
macro_rules! on_both_profiles {
    ($name:ident) => {
        mod $name {
            use mailsync_testenv::dovecot::Profile;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full() {
                super::$name(Profile::Full).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exchange() {
                super::$name(Profile::Exchange).await
            }
        }
    };
}

/// Defines `NAME::full`, `NAME::exchange` and `NAME::no_uidplus` tests running
/// `async fn NAME(Profile)`: for what depends on UIDPLUS, MOVE and LITERAL+.
#[macro_export]
macro_rules! on_three_profiles {
    ($name:ident) => {
        mod $name {
            use mailsync_testenv::dovecot::Profile;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full() {
                super::$name(Profile::Full).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exchange() {
                super::$name(Profile::Exchange).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_uidplus() {
                super::$name(Profile::NoUidplus).await
            }
        }
    };
}
