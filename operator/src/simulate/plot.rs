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
    let err = |reason: String| SimError::Plot {
        path: path.display().to_string(),
        reason,
    };
    if !font_ready() {
        return Err(err("the bundled font does not load".into()));
    }
    draw(outcome, title, path).map_err(|e| err(e.to_string()))
}

type Panel<'a> = (&'a str, &'a str, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

fn draw(outcome: &Outcome, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let s = &outcome.series;
    let tmax = s.last().map_or(1.0, |p| p.t).max(1.0);
    let col = |f: &dyn Fn(&super::Point) -> f64| s.iter().map(|p| (p.t, f(p))).collect::<Vec<_>>();
    let panels: Vec<Panel> = vec![
        (
            "arrivals",
            "req/s",
            vec![(
                "arrivals",
                RGBColor(90, 90, 90),
                col(&|p| f64::from(p.arrivals)),
            )],
        ),
        (
            "pods",
            "pods",
            vec![
                (
                    "replicas",
                    RGBColor(31, 119, 180),
                    col(&|p| f64::from(p.replicas)),
                ),
                ("ready", RGBColor(44, 160, 44), col(&|p| f64::from(p.ready))),
            ],
        ),
        (
            "workers (all pods)",
            "workers",
            vec![(
                "workers",
                RGBColor(148, 103, 189),
                col(&|p| f64::from(p.workers)),
            )],
        ),
        (
            "queue depth (all pods)",
            "requests",
            vec![(
                "queued",
                RGBColor(255, 127, 14),
                col(&|p| f64::from(p.queue)),
            )],
        ),
        (
            "longest queue wait of the requests started each second",
            "ms",
            vec![("wait", RGBColor(214, 39, 40), col(&|p| p.wait_ms))],
        ),
    ];

    let root = BitMapBackend::new(path, (1200, 1250)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(70);
    head.draw(&Text::new(
        title.to_string(),
        (20, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))?;
    let m = &outcome.summary;
    let line = format!(
        "worker-seconds {:.0}   p99 queue wait {:.1} ms   scale events {}   max pods {}   rejected {}",
        m.worker_seconds, m.p99_queue_wait_ms, m.scale_events, m.max_replicas, m.rejected
    );
    head.draw(&Text::new(
        line,
        (20, 40),
        ("sans-serif", 16).into_font().color(&RGBColor(60, 60, 60)),
    ))?;
    let areas = body.split_evenly((panels.len(), 1));
    for (area, (name, unit, lines)) in areas.iter().zip(panels) {
        let ymax = lines
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .caption(name, ("sans-serif", 15))
            .x_label_area_size(28)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .label_style(("sans-serif", 12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        let many = lines.len() > 1;
        for (label, color, pts) in lines {
            let series = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
            if many {
                series
                    .label(label)
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
