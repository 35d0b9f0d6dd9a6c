//! How the command line prints an error: its whole chain on one line, each cause once.

/// The error and its causes joined by ": ", leaving out a cause whose text the message before
/// it already ends with. Library errors that name their source in their own message and also
/// return it from `source()` (so a program can still inspect it) would otherwise print it
/// twice: "listening on ADDR: Address already in use: Address already in use".
pub fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.ends_with(part.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    // One line, whatever the chain holds: scripts read stderr line by line.
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::report;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("listening on {address}: {source}")]
    struct Listen {
        address: &'static str,
        #[source]
        source: io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("opening the file")]
    struct Open {
        #[source]
        source: io::Error,
    }

    #[test]
    fn a_source_the_message_already_names_is_printed_once() {
        let listen = Listen { address: "127.0.0.1:7000", source: io::Error::from(io::ErrorKind::AddrInUse) };
        let error = anyhow::Error::new(listen).context("starting the node");
        let io_text = io::Error::from(io::ErrorKind::AddrInUse).to_string();
        assert_eq!(report(&error), format!("starting the node: listening on 127.0.0.1:7000: {io_text}"));
    }

    #[test]
    fn a_source_the_message_does_not_name_is_printed() {
        let open = Open { source: io::Error::other("disk on fire") };
        let error = anyhow::Error::new(open).context("reading the configuration");
        assert_eq!(report(&error), "reading the configuration: opening the file: disk on fire");
    }

    #[test]
    fn a_multi_line_message_becomes_one_line() {
        let error = anyhow::anyhow!("first line\nsecond line").context("doing it");
        assert_eq!(report(&error), "doing it: first line second line");
    }
}
