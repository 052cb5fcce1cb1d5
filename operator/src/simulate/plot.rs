//! The PNG of a run: arrivals, pods, workers, queue depth and queue wait over time, one panel
//! each. Text is drawn with a bundled font (DejaVu Sans Mono, see `font/LICENSE`), so no
//! system font or fontconfig is needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::{Outcome, SimError};

const FONT: &[u8] = include_bytes!("font/DejaVuSansMono.ttf");

fn font_ready() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok())
}

/// Draws `outcome` to the PNG at `path`, with `title` on top.
pub fn write_png(outcome: &Outcome, title: &str, path: &Path) -> Result<(), SimError> {
    let m = &outcome.summary;
    let line = format!(
        "worker-seconds {:.0}   p99 queue wait {:.1} ms   scale events {}   max pods {}   rejected {}",
        m.worker_seconds, m.p99_queue_wait_ms, m.scale_events, m.max_replicas, m.rejected
    );
    write_panels(path, title, &line, &panels(outcome)).map_err(|e| SimError::Plot {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// One line of a panel: its legend label, colour and points (x in seconds).
pub struct Line {
    /// Legend label (shown when a panel has more than one line).
    pub label: String,
    /// Colour.
    pub color: RGBColor,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, the unit of its y axis and its lines, over a shared time axis.
pub struct Panel {
    /// Caption.
    pub title: String,
    /// The y axis's unit.
    pub unit: String,
    /// Lines.
    pub lines: Vec<Line>,
}

/// A line of `points` labelled `label` in `color`.
pub fn line(label: &str, color: (u8, u8, u8), points: Vec<(f64, f64)>) -> Line {
    Line {
        label: label.into(),
        color: RGBColor(color.0, color.1, color.2),
        points,
    }
}

fn panels(outcome: &Outcome) -> Vec<Panel> {
    let s = &outcome.series;
    let col = |f: &dyn Fn(&super::Point) -> f64| s.iter().map(|p| (p.t, f(p))).collect::<Vec<_>>();
    let panel = |title: &str, unit: &str, lines: Vec<Line>| Panel {
        title: title.into(),
        unit: unit.into(),
        lines,
    };
    let with_activator = outcome.summary.activator.is_some();
    let mut queue_lines = vec![line("queued", (255, 127, 14), col(&|p| f64::from(p.queue)))];
    if with_activator {
        queue_lines.push(line(
            "held at the activator",
            (23, 190, 207),
            col(&|p| f64::from(p.held)),
        ));
    }
    vec![
        panel(
            "arrivals",
            "req/s",
            vec![line(
                "arrivals",
                (90, 90, 90),
                col(&|p| f64::from(p.arrivals)),
            )],
        ),
        panel(
            "pods",
            "pods",
            vec![
                line("replicas", (31, 119, 180), col(&|p| f64::from(p.replicas))),
                line("ready", (44, 160, 44), col(&|p| f64::from(p.ready))),
            ],
        ),
        panel(
            "workers (all pods)",
            "workers",
            vec![line(
                "workers",
                (148, 103, 189),
                col(&|p| f64::from(p.workers)),
            )],
        ),
        panel(
            if with_activator {
                "queue depth (all pods) and requests held at the activator"
            } else {
                "queue depth (all pods)"
            },
            "requests",
            queue_lines,
        ),
        panel(
            "longest queue wait of the requests started each second",
            "ms",
            vec![line("wait", (214, 39, 40), col(&|p| p.wait_ms))],
        ),
    ]
}

/// Draws `panels` stacked, over one time axis, to the PNG at `path`, with `title` and a line
/// of figures (`subtitle`) on top.
pub fn write_panels(
    path: &Path,
    title: &str,
    subtitle: &str,
    panels: &[Panel],
) -> Result<(), Box<dyn std::error::Error>> {
    if !font_ready() {
        return Err("the bundled font does not load".into());
    }
    let tmax = panels
        .iter()
        .flat_map(|p| {
            p.lines
                .iter()
                .flat_map(|l| l.points.iter().map(|(x, _)| *x))
        })
        .fold(1.0f64, f64::max);
    let height = 70 + 236 * panels.len() as u32;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(70);
    head.draw(&Text::new(
        title.to_string(),
        (20, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    head.draw(&Text::new(
        subtitle.to_string(),
        (20, 40),
        ("sans-serif", 16).into_font().color(&RGBColor(60, 60, 60)),
    ))?;
    let areas = body.split_evenly((panels.len(), 1));
    for (area, p) in areas.iter().zip(panels) {
        let ymax = p
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .caption(&p.title, ("sans-serif", 15))
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(p.unit.as_str())
            .label_style(("sans-serif", 12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let many = p.lines.len() > 1;
        for l in &p.lines {
            let color = l.color;
            let series = chart.draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))?;
            if many {
                series
                    .label(l.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        if many {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 12))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
