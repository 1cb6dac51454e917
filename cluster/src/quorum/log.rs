//! A slog drain that forwards raft-rs's log records to `tracing`, at matching levels and
//! under the target `raft`, so the quorum logs where the rest of the broker does without
//! another logging stack.

use std::fmt::Write as _;

use slog::KV as _;

/// Forwards slog records to `tracing` (target `raft`). Records are formatted only when a
/// `tracing` subscriber wants their level.
pub(crate) struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                if tracing::enabled!(target: "raft", tracing::Level::ERROR) {
                    tracing::error!(target: "raft", "{}", render(record, values));
                }
            }
            slog::Level::Warning => {
                if tracing::enabled!(target: "raft", tracing::Level::WARN) {
                    tracing::warn!(target: "raft", "{}", render(record, values));
                }
            }
            // raft-rs says at info what every start and election does (configurations,
            // votes, terms); the controller logs what matters (who leads) itself.
            slog::Level::Info | slog::Level::Debug => {
                if tracing::enabled!(target: "raft", tracing::Level::DEBUG) {
                    tracing::debug!(target: "raft", "{}", render(record, values));
                }
            }
            slog::Level::Trace => {
                if tracing::enabled!(target: "raft", tracing::Level::TRACE) {
                    tracing::trace!(target: "raft", "{}", render(record, values));
                }
            }
        }
        Ok(())
    }
}

/// The record's message followed by its key-value pairs and the logger's, as `key=value`.
fn render(record: &slog::Record<'_>, values: &slog::OwnedKVList) -> String {
    let mut text = KvText(record.msg().to_string());
    // Serializing into a String cannot fail; a failure would only shorten the line.
    let _ = record.kv().serialize(record, &mut text);
    let _ = values.serialize(record, &mut text);
    text.0
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// The logger a quorum node hands raft-rs, tagged with the node's Kafka id.
pub(crate) fn logger(node_id: crate::BrokerId) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node_id" => node_id))
}
