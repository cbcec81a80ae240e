//! An SVG of a simulation: GPU utilisation and queue length over time, one panel each.

use std::fmt::Write;

use super::Sample;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// Renders the timeline; `title` goes on top, `healthy_gpus` scales utilisation.
pub fn svg(title: &str, timeline: &[Sample], healthy_gpus: usize) -> String {
    let t_max = timeline.last().map(|s| s.t_s).unwrap_or(0.0).max(1.0);
    let (unit, scale) = if t_max > 2.0 * 3600.0 {
        ("hours", 3600.0)
    } else {
        ("minutes", 60.0)
    };
    // Both axes end on the fourth of four tidy ticks.
    let t_max = nice_step(t_max / scale / 4.0) * 4.0 * scale;
    let q_most = timeline.iter().map(|s| s.queued_jobs).max().unwrap_or(0);
    let q_max = nice_step(q_most.max(1) as f64 / 4.0) * 4.0;
    let height = TOP + 2.0 * PANEL + GAP + 50.0;
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
    let util: Vec<(f64, f64)> = timeline
        .iter()
        .map(|s| {
            (
                s.t_s,
                100.0 * s.busy_gpus as f64 / healthy_gpus.max(1) as f64,
            )
        })
        .collect();
    let queue: Vec<(f64, f64)> = timeline
        .iter()
        .map(|s| (s.t_s, s.queued_jobs as f64))
        .collect();
    panel(
        &mut out,
        TOP,
        "GPU utilisation (%)",
        &util,
        t_max,
        100.0,
        "#1f77b4",
        scale,
        unit,
    );
    panel(
        &mut out,
        TOP + PANEL + GAP,
        "queued jobs",
        &queue,
        t_max,
        q_max,
        "#d62728",
        scale,
        unit,
    );
    out.push_str("</svg>\n");
    out
}

#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    top: f64,
    label: &str,
    points: &[(f64, f64)],
    x_max: f64,
    y_max: f64,
    colour: &str,
    x_scale: f64,
    x_unit: &str,
) {
    let w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + w * t / x_max;
    let y = |v: f64| top + PANEL - PANEL * v / y_max;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{w}" height="{PANEL}" fill="none" stroke="#888"/>"##
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            y(v) + 4.0,
            trim(v),
            y = y(v)
        );
        let t = x_max * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t),
            top + PANEL + 16.0,
            trim(t / x_scale)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="end">time ({x_unit})</text>"#,
        top - 6.0,
        LEFT + w,
        top + PANEL + 32.0
    );
    // A step line: the value holds until the next sample. Thinned to ~2 points per pixel.
    let mut path = String::new();
    let mut last_px = f64::NEG_INFINITY;
    let mut prev: Option<f64> = None;
    for (i, &(t, v)) in points.iter().enumerate() {
        let px = x(t);
        let is_last = i + 1 == points.len();
        if px - last_px < 0.5 && !is_last {
            continue;
        }
        match prev {
            None => {
                let _ = write!(path, "M{px:.1},{:.1}", y(v));
            }
            Some(pv) => {
                let _ = write!(path, " L{px:.1},{:.1} L{px:.1},{:.1}", y(pv), y(v));
            }
        }
        prev = Some(v);
        last_px = px;
    }
    let _ = writeln!(
        out,
        r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.2"/>"#
    );
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
    } else {
        format!("{v:.1}")
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
    fn draws_both_panels_as_well_formed_svg() {
        let timeline: Vec<Sample> = (0..500)
            .map(|i| Sample {
                t_s: i as f64 * 60.0,
                busy_gpus: (i % 64) as u32,
                queued_jobs: (i % 7) as u32,
            })
            .collect();
        let svg = svg("binpack <default>", &timeline, 64);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("binpack &lt;default&gt;"));
        assert!(svg.contains("GPU utilisation") && svg.contains("queued jobs"));
        assert!(svg.contains("time (hours)"));
        // 500 minutes -> ticks every 2.5 hours up to 10.
        assert!(svg.contains(">2.5<") && svg.contains(">10<"), "{svg}");
        assert_eq!(nice_step(3.1), 5.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(20.0), 20.0);
    }
}
