//! The live, top-like view of `gotrace attach` when stdout is a terminal.
//!
//! Keys: `b`/`a`/`s` sort by bytes, allocations or size (median); `/` filters by a substring of
//! the function, file or type (Enter applies, Esc cancels, an empty filter shows everything);
//! `p` or space pauses the display (collection goes on); `q`, Esc or Ctrl-C quit, after which
//! the final report is printed as usual. Colours follow `NO_COLOR`.

use std::collections::HashMap;
use std::io;

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use tokio::sync::mpsc;

use crate::report::{CallsiteReport, Position, Report, human_bytes, short_path, signed_bytes, summary_line, thousands};

/// The order of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Bytes,
    Allocations,
    Size,
    /// Bytes in use now (go-sampler).
    Inuse,
    /// Growth of the bytes in use since the baseline `g` marked: the leak hunt.
    Growth,
}

impl SortBy {
    fn name(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Allocations => "allocations",
            Self::Size => "size",
            Self::Inuse => "in use",
            Self::Growth => "in-use growth since g was pressed",
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Draw again (the view changed).
    Redraw,
    /// Leave the view and report.
    Quit,
    /// Nothing to do.
    Nothing,
}

/// What the user has chosen, and the data on screen.
#[derive(Debug)]
struct State {
    sort: SortBy,
    filter: String,
    /// The filter being typed, while `/` is active.
    editing: Option<String>,
    paused: bool,
    report: Option<Report>,
    colour: bool,
    /// In-use bytes per row when `g` was last pressed.
    baseline: Option<HashMap<RowId, u64>>,
}

/// What names a row across reports.
type RowId = (String, String, u32, Option<String>, &'static str);

fn row_id(c: &CallsiteReport) -> RowId {
    (
        c.function.clone(),
        c.file.clone(),
        c.line,
        c.type_name.clone(),
        c.kind.as_str(),
    )
}

impl State {
    fn handle(&mut self, key: KeyEvent) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::Nothing;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => text.push(c),
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
            KeyCode::Char('b') => self.sort = SortBy::Bytes,
            KeyCode::Char('a') => self.sort = SortBy::Allocations,
            KeyCode::Char('s') => self.sort = SortBy::Size,
            KeyCode::Char('i') => self.sort = SortBy::Inuse,
            KeyCode::Char('g') => {
                self.sort = SortBy::Growth;
                self.baseline = self.report.as_ref().map(|r| {
                    r.callsites
                        .iter()
                        .map(|c| (row_id(c), c.inuse_bytes.unwrap_or(0)))
                        .collect()
                });
            }
            KeyCode::Char('/') => self.editing = Some(String::new()),
            KeyCode::Char('p' | ' ') => self.paused = !self.paused,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    /// The rows to show: filtered, then sorted.
    fn rows(&self) -> Vec<&CallsiteReport> {
        let Some(report) = &self.report else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&CallsiteReport> = report
            .callsites
            .iter()
            .filter(|c| {
                needle.is_empty()
                    || c.function.to_lowercase().contains(&needle)
                    || c.file.to_lowercase().contains(&needle)
                    || c.type_name
                        .as_deref()
                        .is_some_and(|t| t.to_lowercase().contains(&needle))
            })
            .collect();
        match self.sort {
            SortBy::Bytes => rows.sort_by_key(|c| std::cmp::Reverse(c.bytes)),
            SortBy::Allocations => rows.sort_by_key(|c| std::cmp::Reverse(c.allocations)),
            SortBy::Size => rows.sort_by(|a, b| b.size.p50.cmp(&a.size.p50).then(b.bytes.cmp(&a.bytes))),
            SortBy::Inuse => rows.sort_by_key(|c| std::cmp::Reverse(c.inuse_bytes)),
            SortBy::Growth => rows.sort_by_key(|c| std::cmp::Reverse(self.growth(c))),
        }
        rows
    }

    /// How many bytes the row's in-use grew since the baseline (`None` without one).
    fn growth(&self, c: &CallsiteReport) -> Option<i128> {
        let baseline = self.baseline.as_ref()?;
        let then = baseline.get(&row_id(c)).copied().unwrap_or(0);
        Some(i128::from(c.inuse_bytes.unwrap_or(0)) - i128::from(then))
    }
}

/// The terminal while the view is up. Dropping it restores the terminal.
pub struct LiveView {
    terminal: DefaultTerminal,
    keys: mpsc::UnboundedReceiver<KeyEvent>,
    state: State,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl LiveView {
    /// Takes over the terminal (alternate screen, raw mode). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// When the terminal cannot be set up.
    pub fn start() -> io::Result<Self> {
        let terminal = ratatui::try_init()?;
        let (send, keys) = mpsc::unbounded_channel();
        // crossterm's reader blocks; it gets a thread of its own, which ends with the process.
        std::thread::spawn(move || {
            while let Ok(ev) = event::read() {
                if let Event::Key(key) = ev
                    && send.send(key).is_err()
                {
                    return;
                }
            }
        });
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Ok(Self {
            terminal,
            keys,
            state: State {
                sort: SortBy::Bytes,
                filter: String::new(),
                editing: None,
                paused: false,
                report: None,
                colour,
                baseline: None,
            },
        })
    }

    /// The next key pressed.
    pub async fn next_key(&mut self) -> Option<KeyEvent> {
        self.keys.recv().await
    }

    /// Reacts to a key, redrawing if the view changed.
    ///
    /// # Errors
    /// When drawing fails.
    pub fn handle(&mut self, key: KeyEvent) -> io::Result<Action> {
        let action = self.state.handle(key);
        if action == Action::Redraw {
            self.draw()?;
        }
        Ok(action)
    }

    /// Shows new data, unless paused.
    ///
    /// # Errors
    /// When drawing fails.
    pub fn update(&mut self, report: Report) -> io::Result<()> {
        if !self.state.paused || self.state.report.is_none() {
            self.state.report = Some(report);
        }
        self.draw()
    }

    fn draw(&mut self) -> io::Result<()> {
        let state = &self.state;
        self.terminal.draw(|frame| {
            let [top, table_area, bottom] =
                Layout::vertical([Constraint::Length(2), Constraint::Fill(1), Constraint::Length(1)])
                    .areas(frame.area());
            let style = |s: Style| if state.colour { s } else { Style::default() };

            let summary = state
                .report
                .as_ref()
                .map_or_else(|| "waiting for the first data…".to_owned(), summary_line);
            let mut status = format!("sort: {}", state.sort.name());
            if !state.filter.is_empty() {
                status.push_str("   filter: ");
                status.push_str(&state.filter);
            }
            if state.paused {
                status.push_str("   PAUSED");
            }
            frame.render_widget(
                Paragraph::new(vec![
                    Line::from(summary),
                    Line::styled(status, style(Style::new().add_modifier(Modifier::BOLD).yellow())),
                ]),
                top,
            );

            let rows = state.rows();
            // The other frame of --callsite: your code, or the library line that allocated.
            let other_title = if rows.iter().any(|c| c.via.is_some()) {
                "VIA"
            } else {
                "YOUR CODE"
            };
            let right = |title: &'static str| Cell::from(Line::from(title).right_aligned());
            // In-use columns only where there is something to show: go-sampler's in-use, and
            // growth once `g` has set a baseline.
            let inuse = state.report.as_ref().is_some_and(|r| r.inuse.available);
            let growth = state.baseline.is_some();
            let mut titles = vec![right("BYTES"), right("ALLOCS")];
            let mut widths = vec![Constraint::Length(10), Constraint::Length(11)];
            if inuse {
                titles.push(right("IN USE"));
                widths.push(Constraint::Length(10));
            }
            if growth {
                titles.push(right("GROWTH"));
                widths.push(Constraint::Length(11));
            }
            titles.extend([
                right("P50"),
                right("P99"),
                right("MAX"),
                Cell::from("KIND"),
                Cell::from("TYPE"),
                Cell::from("CALLSITE"),
                Cell::from(other_title),
            ]);
            widths.extend([
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Percentage(20),
                Constraint::Fill(1),
                Constraint::Fill(1),
            ]);
            let header = Row::new(titles).style(style(Style::new().add_modifier(Modifier::BOLD).cyan()));
            let number = |text: String| Cell::from(Line::from(text).right_aligned());
            let body = rows.iter().map(|c| {
                let mut cells = vec![number(human_bytes(c.bytes)), number(thousands(c.allocations))];
                if inuse {
                    cells.push(number(c.inuse_bytes.map_or_else(|| "-".to_owned(), human_bytes)));
                }
                if growth {
                    cells.push(number(state.growth(c).map_or_else(|| "-".to_owned(), signed_bytes)));
                }
                cells.extend([
                    number(c.size.p50.to_string()),
                    number(c.size.p99.to_string()),
                    number(c.size.max.to_string()),
                    Cell::from(c.kind.as_str()),
                    Cell::from(c.type_name.clone().unwrap_or_else(|| "-".to_owned())),
                    Cell::from(format!("{} {}:{}", c.function, short_path(&c.file), c.line)),
                    Cell::from(
                        c.user
                            .as_ref()
                            .or(c.via.as_ref())
                            .map_or_else(String::new, Position::short),
                    ),
                ]);
                Row::new(cells)
            });
            frame.render_widget(Table::new(body, widths).header(header), table_area);

            let help = match &state.editing {
                Some(text) => format!("filter: {text}▏  (Enter apply, Esc cancel)"),
                None => "b bytes · a allocations · s size · i in use · g growth from now · / filter · p pause · q quit"
                    .to_owned(),
            };
            frame.render_widget(
                Paragraph::new(help).style(style(Style::new().add_modifier(Modifier::DIM))),
                bottom,
            );
        })?;
        Ok(())
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Totals;
    use crate::report::{ProbeSummary, SizeStats, TargetInfo};

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn callsite(function: &str, type_name: &str, allocations: u64, bytes: u64, p50: u64) -> CallsiteReport {
        CallsiteReport {
            function: function.to_owned(),
            file: "/app/main.go".to_owned(),
            line: 1,
            type_name: Some(type_name.to_owned()),
            kind: crate::profile::Kind::New,
            allocations,
            bytes,
            size: SizeStats {
                min: p50,
                p50,
                p99: p50,
                max: p50,
            },
            inuse_objects: None,
            inuse_bytes: None,
            inuse_settled_bytes: None,
            inuse_growth_bytes: None,
            inlined_into: Vec::new(),
            user: None,
            via: None,
        }
    }

    fn state() -> State {
        State {
            sort: SortBy::Bytes,
            filter: String::new(),
            editing: None,
            paused: false,
            colour: false,
            baseline: None,
            report: Some(Report {
                target: TargetInfo {
                    pid: 1,
                    exe: "/app".to_owned(),
                    go_version: "go1.27.3".to_owned(),
                    arch: "x86_64".to_owned(),
                },
                mode: crate::mode::Mode::Exact,
                method: "exact".to_owned(),
                estimated: false,
                duration_secs: 1.0,
                totals: Totals::default(),
                inuse: crate::profile::Inuse::default(),
                callsites: vec![
                    callsite("main.big", "main.Big", 1, 1000, 1000),
                    callsite("main.many", "main.Point", 100, 800, 8),
                    callsite("main.mid", "string", 10, 900, 90),
                ],
                probes: ProbeSummary {
                    attached: 1,
                    hits: 0,
                    nested: 0,
                    zero_size: 0,
                    without_stack: 0,
                    dropped_return_address: 0,
                    dropped_counts_map: 0,
                    run_time: None,
                },
                ended: None,
                interval: None,
                growth: None,
            }),
        }
    }

    fn order(s: &State) -> Vec<&str> {
        s.rows().iter().map(|c| c.function.as_str()).collect()
    }

    #[test]
    fn keys_sort_filter_pause_and_quit() {
        let mut s = state();
        assert_eq!(order(&s), ["main.big", "main.mid", "main.many"]);
        assert_eq!(s.handle(key('a')), Action::Redraw);
        assert_eq!(order(&s), ["main.many", "main.mid", "main.big"]);
        s.handle(key('s'));
        assert_eq!(order(&s), ["main.big", "main.mid", "main.many"]);
        s.handle(key('/'));
        for c in "point".chars() {
            s.handle(key(c));
        }
        // Typing does not sort or quit.
        assert_eq!(s.sort, SortBy::Size);
        s.handle(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(order(&s), ["main.many"]);
        s.handle(key('/'));
        s.handle(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(order(&s).len(), 3);
        s.handle(key('p'));
        assert!(s.paused);
        assert_eq!(s.handle(key('x')), Action::Nothing);
        assert_eq!(s.handle(key('q')), Action::Quit);
        assert_eq!(
            s.handle(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    /// `i` sorts by what is held now; `g` marks a baseline and sorts by growth since: the
    /// row that keeps growing comes first even when another holds more.
    #[test]
    fn in_use_and_growth_since_the_baseline() {
        let mut s = state();
        let set_inuse = |s: &mut State, held: &[(&str, u64)]| {
            for c in &mut s.report.as_mut().unwrap().callsites {
                c.inuse_bytes = held.iter().find(|(f, _)| *f == c.function).map(|(_, b)| *b);
            }
        };
        set_inuse(&mut s, &[("main.big", 1000), ("main.mid", 5000), ("main.many", 100)]);
        s.handle(key('i'));
        assert_eq!(order(&s), ["main.mid", "main.big", "main.many"]);
        s.handle(key('g'));
        assert_eq!(s.sort, SortBy::Growth);
        set_inuse(&mut s, &[("main.big", 900), ("main.mid", 5100), ("main.many", 3100)]);
        assert_eq!(order(&s), ["main.many", "main.mid", "main.big"]);
        let many = s.rows()[0];
        assert_eq!(s.growth(many), Some(3000));
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
    }
}
