//! `cluster top`: the hub's admin feed in the terminal, for a server without a browser.
//! Connections, message rates and the job queue by state, refreshed every second from
//! `GET /admin/api/feed` (the hub needs `--admin-token`; either token works here).

mod draw;
mod feed;

use super::provider::Secret;
use feed::{Feed, Query};
use ratatui::backend::{Backend, TestBackend};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use std::time::Duration;
use tokio::sync::mpsc;

/// Options of `cluster top`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Host or IP of the hub.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the hub.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The hub's admin or read-only token. Prefer the environment variable, which keeps
    /// it out of the process list.
    #[arg(
        long,
        value_name = "T",
        env = "CLUSTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Secret,
    /// Show only connections whose id, IP or parameters contain this.
    #[arg(long, default_value = "")]
    filter: String,
    /// Print one frame as text (WIDTHxHEIGHT characters) and exit, instead of taking over
    /// the terminal.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = size)]
    once: Option<(u16, u16)>,
}

fn size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or("expected WIDTHxHEIGHT, e.g. 120x40")?;
    let parse = |v: &str| v.parse::<u16>().map_err(|e| format!("{v:?}: {e}"));
    let (w, h) = (parse(w)?, parse(h)?);
    if w < 40 || h < 12 {
        return Err("at least 40x12".into());
    }
    Ok((w, h))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let source = format!("{}:{}", args.host, args.port);
    let mut query = Query {
        page: 0,
        per_page: 50,
        filter: args.filter.clone(),
    };
    if let Some((width, height)) = args.once {
        let mut feed = Feed::open(&args.host, args.port, args.token.expose(), &query).await?;
        let snapshot = feed.next().await?;
        let mut terminal = Terminal::new(TestBackend::new(width, height))?;
        terminal.draw(|f| draw::draw(f, &snapshot, &source))?;
        print!("{}", text(terminal.backend()));
        return Ok(());
    }
    let keys = keys();
    let mut terminal = ratatui::init();
    let outcome = live(&mut terminal, &args, &source, &mut query, keys).await;
    ratatui::restore();
    outcome
}

/// Redraws on every snapshot until `q`, Esc or Ctrl-C; `n`/`p` change the page.
async fn live<B: Backend>(
    terminal: &mut Terminal<B>,
    args: &Args,
    source: &str,
    query: &mut Query,
    mut keys: mpsc::Receiver<Key>,
) -> anyhow::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let mut feed = Feed::open(&args.host, args.port, args.token.expose(), query).await?;
    let mut last = None;
    loop {
        tokio::select! {
            snapshot = feed.next() => {
                let snapshot = snapshot?;
                terminal.draw(|f| draw::draw(f, &snapshot, source))?;
                last = Some(snapshot);
            }
            key = keys.recv() => match key {
                None | Some(Key::Quit) => return Ok(()),
                Some(Key::Next) | Some(Key::Previous) => {
                    let matching = last.as_ref().map_or(0, |s| s.connections.matching);
                    let pages = matching.div_ceil(query.per_page).max(1);
                    query.page = match key {
                        Some(Key::Next) => (query.page + 1).min(pages - 1),
                        _ => query.page.saturating_sub(1),
                    };
                    feed = Feed::open(&args.host, args.port, args.token.expose(), query).await?;
                }
            },
        }
    }
}

/// What a key press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Quit,
    Next,
    Previous,
}

/// Reads the keyboard on a thread of its own (crossterm's read blocks); ends with the
/// receiver.
fn keys() -> mpsc::Receiver<Key> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || loop {
        let Ok(ready) = event::poll(Duration::from_millis(250)) else {
            return;
        };
        if tx.is_closed() {
            return;
        }
        if !ready {
            continue;
        }
        let Ok(Event::Key(key)) = event::read() else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let wanted = match key.code {
            KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
            KeyCode::Char('n') | KeyCode::PageDown | KeyCode::Right => Key::Next,
            KeyCode::Char('p') | KeyCode::PageUp | KeyCode::Left => Key::Previous,
            _ => continue,
        };
        if tx.blocking_send(wanted).is_err() {
            return;
        }
    });
    rx
}

/// A test backend's screen as lines of text.
fn text(backend: &TestBackend) -> String {
    let buffer = backend.buffer();
    let width = usize::from(buffer.area.width.max(1));
    let mut out = String::new();
    for line in buffer.content().chunks(width) {
        let row: String = line.iter().map(|cell| cell.symbol()).collect();
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_rpc::admin::view::Snapshot;

    #[test]
    fn a_frame_shows_connections_rates_and_the_queue() {
        let json = r#"{"time_ms":60000,"role":"admin",
          "hub":{"connections":2,"members":1,"subscriptions":3,"uptime_s":75,"messages_received":10,"messages_sent":4},
          "rates":{"messages_in":1500.0,"messages_out":2.0,"bytes_in":2048.0,"bytes_out":0.0,"jobs_completed":42.0,"jobs_failed":0.0},
          "history":{"messages_in":[1.0,5.0,1500.0],"messages_out":[],"jobs_completed":[40.0,42.0],"jobs_failed":[]},
          "connections":{"total":2,"matching":2,"page":0,"per_page":50,"filter":"","rows":[
            {"id":"0b5c1e2a-0000-4000-8000-000000000000","ip":"10.1.2.3","parameters":[["key","<redacted>"],["name","worker-7"]],
             "compressed":true,"backpressure":0,"strikes":1,"connected_ms":30000,"member":true}]},
          "services":[],"subjects":{"total":0,"rows":[]},
          "jobs":{"waiting":5,"delayed":1,"active":16,"completed":1234,"failed":2,"dead":1,"workers_total":1,"workers":[],"dead_letters":[]}}"#;
        let snapshot: Snapshot = serde_json::from_str(json).unwrap();
        let mut terminal = Terminal::new(TestBackend::new(120, 20)).unwrap();
        terminal
            .draw(|f| draw::draw(f, &snapshot, "hub:8080"))
            .unwrap();
        let screen = text(terminal.backend());
        for expected in [
            "hub hub:8080",
            "2 connections (1 members)",
            "messages in 1500/s",
            "waiting 5",
            "active 16",
            "completed 1234",
            "dead 1",
            "0b5c1e2a",
            "10.1.2.3",
            "name=worker-7",
            "key=<redacted>",
            "30s",
            "page 1 of 1",
        ] {
            assert!(
                screen.contains(expected),
                "{expected:?} missing from\n{screen}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("120x40"), Ok((120, 40)));
        assert!(size("10x5").is_err());
        assert!(size("abc").is_err());
    }
}
