//! SVG line charts: stacked panels sharing one x axis. Used for simulation timelines and
//! training loss curves; plain SVG, no dependencies, readable in any browser.

use std::fmt::Write;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// How a series joins its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The value holds until the next sample (counts over time).
    Step,
    /// Straight segments between samples (measurements).
    Straight,
}

/// One panel: a labelled series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// The y axis label, drawn above the panel.
    pub label: &'a str,
    /// The points, in increasing x.
    pub points: Vec<(f64, f64)>,
    /// The y axis top; `None` picks a tidy value above the largest point.
    pub y_max: Option<f64>,
    /// The line's colour.
    pub colour: &'a str,
    /// How points are joined.
    pub line: Line,
}

/// The shared x axis: its label, and a divisor for tick labels (3600 shows seconds as hours).
#[derive(Debug, Clone, Copy)]
pub struct XAxis<'a> {
    /// The axis label, with its unit.
    pub label: &'a str,
    /// Tick labels show `x / scale`.
    pub scale: f64,
}

/// Renders `panels` stacked under `title`, all over the x range of the data.
///
/// Axes end at the data (the last x, the largest y, or a panel's fixed `y_max`), with ticks at
/// tidy values inside them: rounding an axis up to the next tidy value can leave up to half of a
/// panel empty.
pub fn svg(title: &str, x_axis: XAxis<'_>, panels: &[Panel<'_>]) -> String {
    let x_most = panels
        .iter()
        .flat_map(|p| p.points.last().map(|pt| pt.0))
        .fold(0.0, f64::max);
    let x_max = if x_most > 0.0 { x_most } else { x_axis.scale };
    let height = TOP + panels.len() as f64 * (PANEL + GAP) - GAP + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let y_most = p.points.iter().map(|pt| pt.1).fold(0.0, f64::max);
        let y_max = p.y_max.unwrap_or(if y_most > 0.0 { y_most } else { 1.0 });
        panel(
            &mut out,
            TOP + i as f64 * (PANEL + GAP),
            p,
            x_max,
            y_max,
            x_axis,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, top: f64, p: &Panel<'_>, x_max: f64, y_max: f64, x_axis: XAxis<'_>) {
    let w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + w * t / x_max;
    let y = |v: f64| top + PANEL - PANEL * v.clamp(0.0, y_max) / y_max;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{w}" height="{PANEL}" fill="none" stroke="#888"/>"##
    );
    for v in ticks(y_max) {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            y(v) + 4.0,
            trim(v),
            y = y(v)
        );
    }
    for t in ticks(x_max / x_axis.scale) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t * x_axis.scale),
            top + PANEL + 16.0,
            trim(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        top - 6.0,
        escape(p.label),
        LEFT + w,
        top + PANEL + 32.0,
        escape(x_axis.label)
    );
    // Thinned to ~2 points per pixel.
    let mut path = String::new();
    let mut last_px = f64::NEG_INFINITY;
    let mut prev: Option<f64> = None;
    for (i, &(t, v)) in p.points.iter().enumerate() {
        let px = x(t);
        let is_last = i + 1 == p.points.len();
        if px - last_px < 0.5 && !is_last {
            continue;
        }
        match (prev, p.line) {
            (None, _) => {
                let _ = write!(path, "M{px:.1},{:.1}", y(v));
            }
            (Some(pv), Line::Step) => {
                let _ = write!(path, " L{px:.1},{:.1} L{px:.1},{:.1}", y(pv), y(v));
            }
            (Some(_), Line::Straight) => {
                let _ = write!(path, " L{px:.1},{:.1}", y(v));
            }
        }
        prev = Some(v);
        last_px = px;
    }
    let _ = writeln!(
        out,
        r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.2"/>"#,
        p.colour
    );
}

/// Tidy tick values from 0 up to `max`: about four steps of 1, 2, 2.5 or 5 times a power of ten.
fn ticks(max: f64) -> Vec<f64> {
    let step = nice_step(max / 4.0);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|&v| v <= max * (1.0 + 1e-9))
        .collect()
}

/// The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `x`.
fn nice_step(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&step| step >= x * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

fn trim(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_ticks_and_escaped_labels() {
        assert_eq!(nice_step(3.1), 5.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(20.0), 20.0);
        let svg = svg(
            "a <b>",
            XAxis {
                label: "step",
                scale: 1.0,
            },
            &[Panel {
                label: "loss",
                points: vec![(0.0, 1.0), (10.0, 0.5), (37.0, 0.04)],
                y_max: None,
                colour: "#000",
                line: Line::Straight,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains(">loss<") && svg.contains(">step<"));
        // 37 steps -> ticks every 10 up to 30, the axis ending at 37; losses up to 1 -> ticks
        // every 0.25.
        assert!(svg.contains(">30<") && !svg.contains(">40<"), "{svg}");
        assert!(svg.contains(">0.2<") && svg.contains(">1<"), "{svg}");
    }
}
