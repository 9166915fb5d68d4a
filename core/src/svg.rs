//! Simple charts written as SVG by hand: line charts (axes with round ticks, one polyline per
//! series and a legend) and horizontal bar charts of rates against their targets. Enough for the
//! simulator's workload and occupancy and the monthly report; no plotting crate, no script, so a
//! chart opens offline and can be inlined into HTML.

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

/// One bar of a bar chart: a rate and, if it has one, its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: Option<f64>,
    pub target: Option<f64>,
}

/// A rate as a percentage with one decimal.
pub fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// The height a bar chart of `n` bars needs.
pub fn bars_height(n: usize) -> u32 {
    34 + 26 * n.max(1) as u32 + 24
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
        self.chart_from(y0, title, x_label, y_label, series, 0.0);
    }

    /// A line chart whose x axis is numbered from `first_x` (day 1 of a month, say).
    pub fn chart_from(
        &mut self,
        y0: u32,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[Series],
        first_x: f64,
    ) {
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
                num(i + first_x)
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

    /// A horizontal bar chart of rates (0 to 1, shown as percentages) whose top edge is at `y0`:
    /// one bar per entry, a dark tick at its target, the value at the bar's end, and a bar that
    /// meets its target in green, one that misses it in orange. Returns the height used.
    pub fn bars(&mut self, y0: u32, title: &str, bars: &[Bar]) -> u32 {
        const ROW: f64 = 26.0;
        const LABEL_W: f64 = 420.0;
        let b = &mut self.body;
        let w = f64::from(self.width);
        let (x_left, x_right) = (LABEL_W + 10.0, w - 90.0);
        let y_top = f64::from(y0) + 34.0;
        let max = bars
            .iter()
            .flat_map(|b| [b.value, b.target])
            .flatten()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max);
        let x_of = |v: f64| x_left + (x_right - x_left) * (v / max).clamp(0.0, 1.0);
        let _ = writeln!(
            b,
            r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
            10.0,
            f64::from(y0) + 20.0,
            escape(title)
        );
        let y_bottom = y_top + ROW * bars.len().max(1) as f64;
        for pct in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let x = x_of(pct * max);
            let _ = writeln!(
                b,
                r##"<line x1="{x:.1}" y1="{y_top:.1}" x2="{x:.1}" y2="{y_bottom:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0}%</text>"##,
                y_bottom + 14.0,
                pct * max * 100.0
            );
        }
        if bars.is_empty() {
            let _ = writeln!(
                b,
                r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#888">nothing to show</text>"##,
                (x_left + x_right) / 2.0,
                y_top + ROW / 2.0 + 4.0
            );
        }
        for (i, bar) in bars.iter().enumerate() {
            let y = y_top + ROW * i as f64;
            let _ = writeln!(
                b,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
                LABEL_W,
                y + ROW / 2.0 + 4.0,
                escape(&bar.label)
            );
            let value = bar.value.filter(|v| v.is_finite());
            let colour = match (value, bar.target) {
                (Some(v), Some(t)) if v >= t => "#2ca02c",
                (Some(_), Some(_)) => "#ff7f0e",
                _ => "#1f77b4",
            };
            match value {
                Some(v) => {
                    let _ = writeln!(
                        b,
                        r#"<rect class="bar" x="{x_left:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                        y + 4.0,
                        (x_of(v) - x_left).max(0.5),
                        ROW - 8.0,
                        escape(&bar.label),
                        percent(v),
                        x_of(v) + 4.0,
                        y + ROW / 2.0 + 4.0,
                        percent(v)
                    );
                }
                None => {
                    let _ = writeln!(
                        b,
                        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#888">no data</text>"##,
                        x_left + 4.0,
                        y + ROW / 2.0 + 4.0
                    );
                }
            }
            if let Some(t) = bar.target.filter(|t| t.is_finite()) {
                let x = x_of(t);
                let _ = writeln!(
                    b,
                    r##"<line class="target" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#222" stroke-width="2.5"><title>target {}</title></line>"##,
                    y + 1.0,
                    y + ROW - 1.0,
                    percent(t)
                );
            }
        }
        let _ = writeln!(
            b,
            r##"<line x1="{x_left:.1}" y1="{y_top:.1}" x2="{x_left:.1}" y2="{y_bottom:.1}" stroke="#444"/>"##
        );
        (y_bottom + 24.0 - f64::from(y0)).ceil() as u32
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
    fn draws_bars_against_targets() {
        let bars = [
            Bar {
                label: "follow-up <rate>".into(),
                value: Some(0.95),
                target: Some(0.9),
            },
            Bar {
                label: "missed".into(),
                value: Some(0.5),
                target: Some(0.9),
            },
            Bar {
                label: "nothing".into(),
                value: None,
                target: None,
            },
        ];
        let mut d = Doc::new(800, bars_height(bars.len()));
        let h = d.bars(0, "Indicators", &bars);
        assert_eq!(h, bars_height(bars.len()));
        let s = d.finish();
        assert_eq!(s.matches(r#"class="bar""#).count(), 2);
        assert_eq!(s.matches(r#"class="target""#).count(), 2);
        assert!(s.contains("follow-up &lt;rate&gt;"));
        assert!(s.contains("95.0%") && s.contains("50.0%") && s.contains("no data"));
        assert!(s.contains("#2ca02c") && s.contains("#ff7f0e"));
        assert!(!s.contains("NaN"));
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

/// A threshold line across a [`readings`] chart: a value and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub label: String,
    pub value: f64,
}

/// The width of `text` at `font_size` in a sans-serif face, estimated generously: about 0.6 em a
/// Latin character, a full em a CJK one, so a label placed by it does not run past an edge.
fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars()
        .map(|c| if c.is_ascii() { 0.62 } else { 1.0 })
        .sum::<f64>()
        * font_size
}

/// `text` cut with an ellipsis to fit `width` at `font_size`.
fn fit_text(text: &str, font_size: f64, width: f64) -> String {
    if text_width(text, font_size) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    for c in text.chars() {
        let mut next = out.clone();
        next.push(c);
        next.push('…');
        if text_width(&next, font_size) > width {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// Baselines for labels of `size` beside lines at `ys`: above its line where there is room, else
/// below it, else just under the label before; each within `[top + size, bottom]` and clear of the
/// others. Returned in the order of `ys`.
fn label_baselines(ys: &[f64], size: f64, top: f64, bottom: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..ys.len()).collect();
    order.sort_by(|a, b| ys[*a].total_cmp(&ys[*b]));
    let mut out = vec![0.0; ys.len()];
    let mut placed: Vec<f64> = Vec::new();
    let line = size + 2.0;
    for i in order {
        let fits =
            |b: f64| b - size >= top && b <= bottom && placed.iter().all(|p| (p - b).abs() >= line);
        let last = placed.iter().copied().fold(top + size - line, f64::max);
        let b = [ys[i] - 4.0, ys[i] + size + 3.0]
            .into_iter()
            .find(|b| fits(*b))
            .unwrap_or_else(|| (last + line).clamp(top + size, bottom));
        placed.push(b);
        out[i] = b;
    }
    out
}

/// One patient's readings of one kind over time (`points` are (Unix seconds, value)), with the
/// alarm thresholds drawn as dashed lines: a standalone SVG with a title for screen readers.
/// The x axis runs from the first reading to the last; `x_labels` names its two ends. A
/// threshold's label sits inside the plot at its right end, on a white halo, cut to the plot's
/// width if it must be, so that it stays readable at the chart's edge and when the chart is drawn
/// smaller.
pub fn readings(
    title: &str,
    points: &[(i64, f64)],
    thresholds: &[Threshold],
    x_labels: (&str, &str),
) -> String {
    let (w, h) = (640.0, 220.0);
    let (left, right, top, bottom) = (56.0, 16.0, 28.0, 30.0);
    let values = points
        .iter()
        .map(|p| p.1)
        .chain(thresholds.iter().map(|t| t.value))
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    if (hi - lo).abs() < f64::EPSILON {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.08;
    let (lo, hi) = (lo - pad, hi + pad);
    let t0 = points.first().map_or(0, |p| p.0);
    let t1 = points.last().map_or(1, |p| p.0).max(t0 + 1);
    let x = |t: i64| left + (t - t0) as f64 / (t1 - t0) as f64 * (w - left - right);
    let y = |v: f64| top + (hi - v) / (hi - lo) * (h - top - bottom);
    let mut b = String::new();
    let _ = write!(
        b,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><rect width="{w}" height="{h}" fill="#fff"/><text x="{left}" y="18" font-size="13" font-weight="600" fill="#1a1a1a">{t}</text>"##,
        t = escape(title)
    );
    let _ = write!(
        b,
        r##"<line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#6b7280"/><line x1="{left}" y1="{top}" x2="{left}" y2="{yb}" stroke="#6b7280"/>"##,
        yb = h - bottom,
        xr = w - right
    );
    for v in [lo + pad, hi - pad] {
        let _ = write!(
            b,
            r##"<text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#374151">{v:.1}</text>"##,
            tx = left - 6.0,
            ty = y(v) + 4.0
        );
    }
    let _ = write!(
        b,
        r##"<text x="{left}" y="{ty}" font-size="11" fill="#374151">{a}</text><text x="{xr}" y="{ty}" font-size="11" text-anchor="end" fill="#374151">{z}</text>"##,
        ty = h - 10.0,
        xr = w - right,
        a = escape(x_labels.0),
        z = escape(x_labels.1)
    );
    let size = 11.0;
    let ys: Vec<f64> = thresholds.iter().map(|t| y(t.value)).collect();
    let baselines = label_baselines(&ys, size, top, h - bottom);
    for (t, (ty, ly)) in thresholds.iter().zip(ys.iter().zip(&baselines)) {
        let full = format!("{} {}", t.label, num_short(t.value));
        let _ = write!(
            b,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{xr}" y2="{ty:.1}" stroke="#a11b1b" stroke-dasharray="6 4"/>"##,
            xr = w - right,
        );
        let _ = write!(
            b,
            r##"<text class="threshold" x="{lx}" y="{ly:.1}" font-size="{size}" text-anchor="end" fill="#a11b1b" stroke="#fff" stroke-width="3" paint-order="stroke"><title>{full}</title>{l}</text>"##,
            lx = w - right - 4.0,
            full = escape(&full),
            l = escape(&fit_text(&full, size, w - left - right - 8.0)),
        );
    }
    if !points.is_empty() {
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = write!(
            b,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{p}"/>"##,
            c = PALETTE[0],
            p = path.join(" ")
        );
        for p in points.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                b,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"##,
                x(p.0),
                y(p.1),
                c = PALETTE[0]
            );
        }
    }
    b.push_str("</svg>");
    b
}

fn num_short(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod readings_tests {
    use super::*;

    #[test]
    fn a_readings_chart_draws_every_reading_and_threshold() {
        let svg = readings(
            "bp_systolic <&>",
            &[(0, 150.0), (86_400, 185.0), (172_800, 160.0)],
            &[Threshold {
                label: "≥".into(),
                value: 180.0,
            }],
            ("a", "b"),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("stroke-dasharray") && svg.contains("≥ 180"));
        assert!(svg.contains("bp_systolic &lt;&amp;&gt;"));
    }

    /// (x, baseline, text) of every threshold label.
    fn labels(svg: &str) -> Vec<(f64, f64, String)> {
        svg.split(r#"<text class="threshold" "#)
            .skip(1)
            .map(|t| {
                let attr = |name: &str| -> f64 {
                    let at = t.find(&format!(r#"{name}=""#)).expect("attribute") + name.len() + 2;
                    t[at..t[at..].find('"').expect("end") + at]
                        .parse()
                        .expect("a number")
                };
                let text = t
                    [t.find("</title>").expect("title") + 8..t.find("</text>").expect("end")]
                    .to_string();
                (attr("x"), attr("y"), text)
            })
            .collect()
    }

    #[test]
    fn threshold_labels_stay_inside_the_chart_and_clear_of_each_other() {
        let (w, h) = (640.0, 220.0);
        let cases: Vec<Vec<Threshold>> = vec![
            // Long names, close values (one stroke above another).
            vec![
                Threshold {
                    label: "pregnancy_bp_severe >=".into(),
                    value: 160.0,
                },
                Threshold {
                    label: "pregnancy_bp_raised >=".into(),
                    value: 158.0,
                },
                Threshold {
                    label: "fetal_heart_abnormal <".into(),
                    value: 110.0,
                },
            ],
            // A name longer than the whole plot, and Chinese text.
            vec![
                Threshold {
                    label: "a".repeat(200),
                    value: 5.0,
                },
                Threshold {
                    label: "收缩压危急值报警阈值 ≥".into(),
                    value: 180.0,
                },
            ],
            // The highest value at the top of the plot: its label goes under the line.
            vec![Threshold {
                label: "bp_crisis >=".into(),
                value: 300.0,
            }],
        ];
        for thresholds in cases {
            let svg = readings(
                "bp",
                &[(0, 120.0), (86_400, 150.0)],
                &thresholds,
                ("a", "b"),
            );
            let found = labels(&svg);
            assert_eq!(found.len(), thresholds.len(), "{svg}");
            for (x, base, text) in &found {
                let text = text
                    .replace("&gt;", ">")
                    .replace("&lt;", "<")
                    .replace("&amp;", "&");
                let width = text_width(&text, 11.0);
                assert!(
                    *x <= w && x - width >= 56.0,
                    "{text:?} runs out of the chart: {x} - {width}"
                );
                assert!(base - 11.0 >= 0.0 && *base <= h, "{text:?} at {base}");
            }
            for (i, a) in found.iter().enumerate() {
                for b in &found[i + 1..] {
                    assert!((a.1 - b.1).abs() >= 12.0, "{a:?} overlaps {b:?}");
                }
            }
        }
        // A label that fits is not cut; the full text stays in its title.
        let svg = readings(
            "bp",
            &[(0, 1.0)],
            &[Threshold {
                label: "x".repeat(300),
                value: 2.0,
            }],
            ("a", "b"),
        );
        assert!(svg.contains(&format!("<title>{} 2</title>", "x".repeat(300))));
        assert!(labels(&svg)[0].2.ends_with('…'));
        let svg = readings(
            "bp",
            &[(0, 1.0)],
            &[Threshold {
                label: "high >=".into(),
                value: 2.0,
            }],
            ("a", "b"),
        );
        assert_eq!(labels(&svg)[0].2, "high &gt;= 2");
    }
}
