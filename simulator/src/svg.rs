//! Simple line charts written as SVG by hand: axes with round ticks, one polyline per series and a
//! legend. Enough for workload and occupancy over a run; no plotting crate needed.

use std::fmt::Write as _;

const PALETTE: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22", "#393b79", "#ad494a",
];

const CHART_H: u32 = 320;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 42.0;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step so that `max / step` is about `ticks`.
pub fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    (nice * mag).max(1.0)
}

fn num(x: f64) -> String {
    if x >= 1_000_000.0 {
        format!("{:.1}M", x / 1_000_000.0)
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1_000.0)
    } else {
        format!("{x:.0}")
    }
}

/// One line of a chart. The colour is an index into a fixed palette, so the same role or state
/// keeps its colour from chart to chart; past the palette, lines are dashed.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub colour: usize,
    pub values: Vec<f64>,
}

/// An SVG document holding one or more charts stacked vertically.
pub struct Doc {
    width: u32,
    height: u32,
    body: String,
}

impl Doc {
    pub fn new(width: u32, height: u32) -> Doc {
        Doc {
            width,
            height,
            body: String::new(),
        }
    }

    /// A line chart whose top edge is at `y0`; every series has one value per day.
    pub fn chart(&mut self, y0: u32, title: &str, x_label: &str, y_label: &str, series: &[Series]) {
        let b = &mut self.body;
        let (w, y0) = (f64::from(self.width), f64::from(y0));
        let (x_left, x_right) = (LEFT, w - RIGHT);
        let (y_top, y_bottom) = (y0 + TOP, y0 + f64::from(CHART_H) - BOTTOM);
        let n = series
            .iter()
            .map(|s| s.values.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let max = series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max);
        let y_step = nice_step(max, 5.0);
        let y_max = ((max / y_step).ceil() * y_step).max(y_step);
        let x_of = |i: f64| x_left + (x_right - x_left) * i / (n - 1) as f64;
        let y_of = |v: f64| y_bottom - (y_bottom - y_top) * v / y_max;

        let _ = writeln!(
            b,
            r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
            x_left,
            y0 + 20.0,
            escape(title)
        );
        // Grid and y ticks.
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let y = y_of(v);
            let _ = writeln!(
                b,
                r##"<line x1="{x_left:.1}" y1="{y:.1}" x2="{x_right:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                x_left - 6.0,
                y + 4.0,
                num(v)
            );
            v += y_step;
        }
        // X ticks.
        let x_step = nice_step((n - 1) as f64, 8.0);
        let mut i = 0.0;
        while i <= (n - 1) as f64 + 1e-9 {
            let x = x_of(i);
            let _ = writeln!(
                b,
                r##"<line x1="{x:.1}" y1="{y_bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                y_bottom + 4.0,
                y_bottom + 17.0,
                num(i)
            );
            i += x_step;
        }
        let _ = writeln!(
            b,
            r##"<line x1="{x_left:.1}" y1="{y_top:.1}" x2="{x_left:.1}" y2="{y_bottom:.1}" stroke="#444"/><line x1="{x_left:.1}" y1="{y_bottom:.1}" x2="{x_right:.1}" y2="{y_bottom:.1}" stroke="#444"/>"##
        );
        let _ = writeln!(
            b,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            (x_left + x_right) / 2.0,
            y_bottom + 34.0,
            escape(x_label)
        );
        let _ = writeln!(
            b,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
            16.0,
            (y_top + y_bottom) / 2.0,
            escape(y_label)
        );
        if series.is_empty() {
            let _ = writeln!(
                b,
                r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#888">nothing to show</text>"##,
                (x_left + x_right) / 2.0,
                (y_top + y_bottom) / 2.0
            );
        }
        for (
            k,
            Series {
                name,
                colour,
                values,
            },
        ) in series.iter().enumerate()
        {
            let dash = if *colour >= PALETTE.len() {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let colour = PALETTE[colour % PALETTE.len()];
            let mut pts = String::new();
            for (i, v) in values.iter().enumerate() {
                let _ = write!(pts, "{:.1},{:.1} ", x_of(i as f64), y_of(*v));
            }
            let _ = writeln!(
                b,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{}"><title>{}</title></polyline>"#,
                pts.trim_end(),
                escape(name)
            );
            let ly = y_top + 4.0 + 17.0 * k as f64;
            let lx = x_right + 16.0;
            let _ = writeln!(
                b,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                escape(name)
            );
        }
    }

    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(97.0, 5.0), 20.0);
        assert_eq!(nice_step(364.0, 8.0), 50.0);
        assert_eq!(nice_step(3.0, 5.0), 1.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn draws_a_chart_with_escaped_names() {
        let mut d = Doc::new(600, 320);
        d.chart(
            0,
            "Backlog <by role>",
            "day",
            "tasks",
            &[
                Series {
                    name: "a&b".into(),
                    colour: 0,
                    values: vec![0.0, 5.0, 3.0],
                },
                Series {
                    name: "c".into(),
                    colour: 13,
                    values: vec![1.0, 1.0, 1.0],
                },
            ],
        );
        let s = d.finish();
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("Backlog &lt;by role&gt;"));
        assert!(s.contains("a&amp;b"));
        assert!(!s.contains("NaN"));
        assert_eq!(
            s.matches("stroke-dasharray").count(),
            2,
            "the second line is dashed"
        );
    }
}
