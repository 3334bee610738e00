//! Ending a PostgreSQL backend's sessions, found by their `application_name`: the fault
//! tests and the demo inject. (Valkey's counterpart is
//! [`ValkeyServer::kill_clients_named`](crate::ValkeyServer::kill_clients_named).)

use crate::ServerError;

/// The `application_name` of the session that terminates the others.
const ADMIN: &str = "completion-testserver-admin";

/// Terminates every session of the PostgreSQL server at `url` whose `application_name` is
/// one of `names` (`pg_terminate_backend`); returns how many. Works on an external server
/// too, given a superuser or a member of `pg_signal_backend`.
///
/// Unlike the rest of the crate this is async: it talks to the server with tokio-postgres
/// on the caller's tokio runtime, over a session of its own (named
/// `completion-testserver-admin`, without TLS) that ends on return.
pub async fn terminate_sessions(url: &str, names: &[String]) -> Result<usize, ServerError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| ServerError::InvalidUrl(chain(&e)))?;
    config.application_name(ADMIN);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        ServerError::io("connecting to PostgreSQL to terminate sessions", std::io::Error::other(chain(&e)))
    })?;
    let connection = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| ServerError::Reply(format!("pg_terminate_backend: {}", chain(&e))))?;
    drop(client);
    // The connection task ends with the client; its outcome does not change the answer.
    let _ = connection.await;
    let count: i64 = row.try_get(0).map_err(|e| ServerError::Protocol(chain(&e)))?;
    usize::try_from(count).map_err(|_| ServerError::Protocol(format!("pg_terminate_backend counted {count}")))
}

/// `e` and its sources on one line (tokio-postgres says what failed, its source why).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(next) = source {
        line = format!("{line}: {next}");
        source = next.source();
    }
    line
}
