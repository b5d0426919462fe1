//! One frame of `cluster top`: the hub's counts and rates, the job queue by state, and a
//! page of connections, from one [`Snapshot`].

use cluster_rpc::admin::view::{ConnectionRow, Snapshot};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

/// Draws `snapshot` of the hub at `source` (`host:port`).
pub(crate) fn draw(frame: &mut Frame<'_>, snapshot: &Snapshot, source: &str) {
    let [header, traffic, queue, connections, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(summary(snapshot, source)), header);
    draw_traffic(frame, snapshot, traffic);
    draw_queue(frame, snapshot, queue);
    draw_connections(frame, snapshot, connections);
    let page = &snapshot.connections;
    let pages = page.matching.div_ceil(page.per_page.max(1)).max(1);
    let help = format!(
        " q quit · n/p next/previous page · page {} of {pages}{}",
        page.page + 1,
        if page.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter {:?}", page.filter)
        }
    );
    frame.render_widget(Paragraph::new(help).style(dim()), footer);
}

fn summary(s: &Snapshot, source: &str) -> Line<'static> {
    let h = &s.hub;
    Line::from(vec![
        Span::styled(format!(" hub {source} "), bold()),
        Span::raw(format!(
            "· {} · up {} · {} connections ({} members) · {} subscriptions",
            s.role,
            duration(h.uptime_s),
            count(h.connections as f64),
            count(h.members as f64),
            count(h.subscriptions as f64),
        )),
    ])
}

fn draw_traffic(frame: &mut Frame<'_>, s: &Snapshot, area: Rect) {
    let r = &s.rates;
    let title = format!(
        " messages in {}/s  out {}/s · bytes in {}/s  out {}/s ",
        count(r.messages_in),
        count(r.messages_out),
        bytes(r.bytes_in),
        bytes(r.bytes_out),
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(
        Sparkline::default()
            .data(tail(&s.history.messages_in, inner.width))
            .style(Style::default().fg(Color::Blue)),
        inner,
    );
}

fn draw_queue(frame: &mut Frame<'_>, s: &Snapshot, area: Rect) {
    let j = &s.jobs;
    let title = format!(
        " jobs: waiting {} · delayed {} · active {} · completed {} · failed {} · dead {} · {} workers · {}/s ",
        count(j.waiting as f64),
        count(j.delayed as f64),
        count(j.active as f64),
        count(j.completed as f64),
        count(j.failed as f64),
        count(j.dead as f64),
        count(j.workers_total as f64),
        count(s.rates.jobs_completed),
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(
        Sparkline::default()
            .data(tail(&s.history.jobs_completed, inner.width))
            .style(Style::default().fg(Color::Green)),
        inner,
    );
}

fn draw_connections(frame: &mut Frame<'_>, s: &Snapshot, area: Rect) {
    let page = &s.connections;
    let header = Row::new([
        "id",
        "ip",
        "parameters",
        "deflate",
        "backpressure",
        "strikes",
        "connected",
    ])
    .style(bold());
    let rows = page.rows.iter().map(|c| row(c, s.time_ms));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Min(20),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Length(7),
        Constraint::Length(10),
    ];
    let title = format!(
        " connections {}{} ",
        count(page.total as f64),
        if page.filter.is_empty() {
            String::new()
        } else {
            format!(", {} matching", count(page.matching as f64))
        }
    );
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        area,
    );
}

fn row(c: &ConnectionRow, now_ms: u64) -> Row<'static> {
    let parameters = c
        .parameters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    Row::new([
        c.id.chars().take(8).collect::<String>(),
        c.ip.clone(),
        parameters,
        if c.compressed { "yes" } else { "no" }.to_owned(),
        bytes(c.backpressure as f64),
        c.strikes.to_string(),
        duration(now_ms.saturating_sub(c.connected_ms) / 1000),
    ])
}

/// The last `width` values, as the sparkline's integers.
fn tail(values: &[f64], width: u16) -> Vec<u64> {
    let skip = values.len().saturating_sub(usize::from(width));
    values[skip..]
        .iter()
        .map(|v| v.max(0.0).round() as u64)
        .collect()
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::default().add_modifier(Modifier::DIM)
}

/// `1234567.0` as `1.2M`, small numbers as they are.
pub(crate) fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n if n >= 100.0 || n.fract() == 0.0 => format!("{n:.0}"),
        n => format!("{n:.1}"),
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0)),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / (1024.0 * 1024.0)),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(count(3.0), "3");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(count(2_500_000.0), "2.5M");
        assert_eq!(bytes(2048.0), "2.0 KiB");
        assert_eq!(duration(75), "1m15s");
        assert_eq!(tail(&[1.0, 2.0, 3.0], 2), [2, 3]);
    }
}
