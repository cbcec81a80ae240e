//! An SVG of a simulation: GPU utilisation and queue length over time, one panel each.

use super::Sample;

use crate::chart::{self, Line, Panel, XAxis};

/// Renders the timeline; `title` goes on top, `healthy_gpus` scales utilisation.
pub fn svg(title: &str, timeline: &[Sample], healthy_gpus: usize) -> String {
    let t_max = timeline.last().map(|s| s.t_s).unwrap_or(0.0);
    let (label, scale) = if t_max > 2.0 * 3600.0 {
        ("time (hours)", 3600.0)
    } else {
        ("time (minutes)", 60.0)
    };
    let util = timeline
        .iter()
        .map(|s| {
            (
                s.t_s,
                100.0 * s.busy_gpus as f64 / healthy_gpus.max(1) as f64,
            )
        })
        .collect();
    let queue = timeline
        .iter()
        .map(|s| (s.t_s, s.queued_jobs as f64))
        .collect();
    chart::svg(
        title,
        XAxis { label, scale },
        &[
            Panel {
                label: "GPU utilisation (%)",
                points: util,
                y_max: Some(100.0),
                colour: "#1f77b4",
                line: Line::Step,
            },
            Panel {
                label: "queued jobs",
                points: queue,
                y_max: None,
                colour: "#d62728",
                line: Line::Step,
            },
        ],
    )
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
        // 499 minutes (8.3 hours) -> ticks every 2.5 hours up to 7.5.
        assert!(svg.contains(">2.5<") && svg.contains(">7.5<"), "{svg}");
        assert!(!svg.contains(">10<"), "{svg}");
    }

    /// The review's finding: axes ran to the next "tidy" value, up to twice the data (a queue
    /// of 41 drew to 80, a run of 8.3 hours to 10): both axes end at the data.
    #[test]
    fn plot_axes_end_at_the_data() {
        let timeline: Vec<Sample> = (0..=500)
            .map(|i| Sample {
                t_s: i as f64 * 60.0,
                busy_gpus: 64,
                queued_jobs: if i == 250 { 41 } else { 3 },
            })
            .collect();
        let svg = svg("run", &timeline, 64);
        // Every path ends at the right edge of its panel (x = 880).
        let ends: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<path"))
            .map(|l| l.split('"').nth(1).unwrap().rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(ends.len(), 2);
        for end in ends {
            assert!(end.starts_with("L880.0,"), "{end}");
        }
        // The queue's peak touches the top of its panel (y = 320, the second panel's top).
        assert!(svg.contains(",320.0"), "{svg}");
    }
}
