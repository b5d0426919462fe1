//! What one client, or a crowd of them, may cost a provider: the flags over
//! [`ProviderOptions`]' limits that an operator tunes against slowloris, floods and
//! clients that stop reading. Each flag's default is the library's own.

use cluster_transport::ProviderOptions;
use std::sync::LazyLock;
use std::time::Duration;

/// The library's defaults, shown in `--help` and used when a flag is not given.
static DEFAULTS: LazyLock<ProviderOptions> = LazyLock::new(ProviderOptions::default);

/// Milliseconds of a default duration, for `--help`.
fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A byte or count limit of at least 1 (0 would refuse everything).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// The limit flags of `cluster provider`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct Limits {
    /// Largest incoming message in bytes, inclusive; larger closes the connection (1009).
    #[arg(long, value_name = "BYTES", value_parser = at_least_one,
          default_value_t = DEFAULTS.ws.max_payload_length)]
    max_payload_length: usize,
    /// Most bytes queued for one connection that does not read; over it the connection is
    /// closed.
    #[arg(long, value_name = "BYTES", value_parser = at_least_one,
          default_value_t = DEFAULTS.ws.max_backpressure)]
    max_backpressure: usize,
    /// Time a client has to send its whole upgrade request (what a slowloris client meets).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..),
          default_value_t = ms(DEFAULTS.handshake.timeout))]
    handshake_timeout_ms: u64,
    /// Largest upgrade request (request line plus headers) in bytes; larger gets 431.
    #[arg(long, value_name = "BYTES", value_parser = at_least_one,
          default_value_t = DEFAULTS.handshake.max_request_bytes)]
    max_handshake_bytes: usize,
    /// Most connections open at once; more wait in the kernel's backlog until one closes.
    #[arg(long, value_name = "N", value_parser = at_least_one,
          default_value_t = DEFAULTS.max_connections)]
    max_connections: usize,
    /// How long a graceful close (and shutdown) waits for a consumer's close frame.
    #[arg(long, value_name = "MS", default_value_t = ms(DEFAULTS.close_timeout))]
    close_timeout_ms: u64,
}

impl Limits {
    /// Sets these limits in `options`.
    pub(crate) fn apply(&self, options: &mut ProviderOptions) {
        options.ws.max_payload_length = self.max_payload_length;
        options.ws.max_backpressure = self.max_backpressure;
        options.handshake.timeout = Duration::from_millis(self.handshake_timeout_ms);
        options.handshake.max_request_bytes = self.max_handshake_bytes;
        options.max_connections = self.max_connections;
        options.close_timeout = Duration::from_millis(self.close_timeout_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    fn applied(args: &[&str]) -> ProviderOptions {
        let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).unwrap();
        let mut options = ProviderOptions::default();
        cli.limits.apply(&mut options);
        options
    }

    #[test]
    fn no_flags_keep_the_library_defaults() {
        let options = applied(&[]);
        let defaults = ProviderOptions::default();
        assert_eq!(
            options.ws.max_payload_length,
            defaults.ws.max_payload_length
        );
        assert_eq!(options.ws.max_backpressure, defaults.ws.max_backpressure);
        assert_eq!(options.handshake.timeout, defaults.handshake.timeout);
        assert_eq!(
            options.handshake.max_request_bytes,
            defaults.handshake.max_request_bytes
        );
        assert_eq!(options.max_connections, defaults.max_connections);
        assert_eq!(options.close_timeout, defaults.close_timeout);
    }

    #[test]
    fn flags_set_every_limit() {
        let options = applied(&[
            "--max-payload-length=100",
            "--max-backpressure=200",
            "--handshake-timeout-ms=300",
            "--max-handshake-bytes=400",
            "--max-connections=5",
            "--close-timeout-ms=600",
        ]);
        assert_eq!(options.ws.max_payload_length, 100);
        assert_eq!(options.ws.max_backpressure, 200);
        assert_eq!(options.handshake.timeout, Duration::from_millis(300));
        assert_eq!(options.handshake.max_request_bytes, 400);
        assert_eq!(options.max_connections, 5);
        assert_eq!(options.close_timeout, Duration::from_millis(600));
    }

    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--max-connections=0",
            "--handshake-timeout-ms=0",
            "--max-payload-length=0",
        ] {
            let error = Cli::try_parse_from(["test", flag]).unwrap_err().to_string();
            assert!(error.contains(flag.split('=').next().unwrap()), "{error}");
        }
    }
}
