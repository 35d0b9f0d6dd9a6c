//! PNG charts of what the load generator measured: latency by percentile, and a sweep's latency
//! against throughput.
//!
//! The percentile axis is HdrHistogram's plotter's: x = 1/(1-p) on a log scale, so each tick is
//! one more nine (0%, 90%, 99%, 99.9%, ...) and the tail gets as much room as the median. 100% lies
//! at infinity on that axis, so a curve's last point (the maximum) is drawn at 1 - 1/count, the
//! finest percentile `count` operations tell apart.
//!
//! Text is drawn with DejaVu Sans embedded from `bench/assets/` (its licence is beside it), so a
//! chart looks the same on a machine with no fonts installed, and nothing links fontconfig or
//! freetype.

use crate::histogram::PercentilePoint;
use anyhow::{ensure, Context, Result};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

const FONT_DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family name the embedded font is registered under: plotters' name for sans-serif.
const FONT_FAMILY: &str = "sans-serif";
const WIDTH_PIXELS: u32 = 1200;
const HEIGHT_PIXELS: u32 = 720;
const TITLE_FONT_PIXELS: u32 = 26;
const SUBTITLE_FONT_PIXELS: u32 = 19;
const AXIS_DESCRIPTION_FONT_PIXELS: u32 = 22;
const LABEL_FONT_PIXELS: u32 = 18;
/// The percentile axis shows at least up to 99%, however few operations a curve has.
const NINES_AXIS_END_MIN: f64 = 2.0;
/// Series colours: the Okabe-Ito palette, told apart by colour-blind readers too.
const SERIES_COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];
const MARKER_RADIUS_PIXELS: i32 = 6;
/// The sweep chart's legend column, right of its plot.
const LEGEND_WIDTH_PIXELS: u32 = 330;
const SLO_COLOR: RGBColor = RGBColor(200, 0, 0);
const BEST_RATE_COLOR: RGBColor = RGBColor(90, 90, 90);

/// One operation kind's latency-by-percentile curve.
pub struct LatencyCurve {
    /// The legend entry, such as `read (12345 ops, 6000 ops/s)`.
    pub label: String,
    /// Operations measured: the finest percentile they resolve is 1 - 1/count.
    pub count: u64,
    pub points: Vec<PercentilePoint>,
}

/// One point of a latency-against-throughput series: one sweep run.
#[derive(Clone, Copy, Debug)]
pub struct ThroughputPoint {
    pub ops_per_sec: f64,
    pub latency_us: f64,
    /// Whether the run met the SLO: its marker is filled, otherwise hollow.
    pub met: bool,
}

/// One percentile's latency across a sweep's runs, such as p99.
pub struct ThroughputSeries {
    pub label: String,
    pub points: Vec<ThroughputPoint>,
}

/// What a sweep chart shows beside its series.
pub struct SweepMarks {
    /// The SLO's latency, drawn as a horizontal line.
    pub slo_us: f64,
    pub slo_label: String,
    /// The achieved throughput of the highest rate meeting the SLO, drawn as a vertical line.
    pub best_ops_per_sec: Option<f64>,
    pub best_label: String,
}

/// Where a percentile sits on the chart's x axis: the number of nines, log10(1/(1-p)); 0% is 0,
/// 90% is 1, 99% is 2. `quantile` is clamped to `1 - 1/count` (at least 0).
pub fn nines(quantile: f64, count: u64) -> f64 {
    let finest = 1.0 - 1.0 / count.max(1) as f64;
    let quantile = quantile.clamp(0.0, finest);
    -(1.0 - quantile).log10()
}

/// The percentile at `nines` on the x axis, as its tick reads: `0%`, `90%`, `99%`, `99.9%`, ...
pub fn nines_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.ceil() as i64 - 2).clamp(0, 17) as usize;
    format!("{percent:.decimals$}%")
}

/// Where the percentile axis ends for curves reaching `nines_max`: the next whole nine past it,
/// so the maximum is not drawn on the frame.
fn nines_axis_end(nines_max: f64) -> f64 {
    (nines_max.floor() + 1.0).max(NINES_AXIS_END_MIN)
}

/// The percentile axis: linear in nines from 0 to `end`, a tick at each whole nine labelled with
/// its percentile.
struct NinesAxis {
    end: f64,
}

impl Ranged for NinesAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, nines: &f64, limit: (i32, i32)) -> i32 {
        let share = nines / self.end;
        limit.0 + (f64::from(limit.1 - limit.0) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only the whole nines, and no lighter grid between them.
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        // Bounded: `end` is at most log10(u64::MAX) + 1, about 20.
        (0..=self.end.floor() as u32).map(f64::from).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.end
    }
}

impl ValueFormatter<f64> for NinesAxis {
    fn format(nines: &f64) -> String {
        nines_label(*nines)
    }
}

/// The unit a latency axis is drawn in: microseconds for sub-millisecond charts, else milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LatencyUnit {
    Micros,
    Millis,
}

impl LatencyUnit {
    fn for_max_us(max_us: f64) -> Self {
        if max_us < 1000.0 {
            LatencyUnit::Micros
        } else {
            LatencyUnit::Millis
        }
    }

    fn in_unit(self, latency_us: f64) -> f64 {
        match self {
            LatencyUnit::Micros => latency_us,
            LatencyUnit::Millis => latency_us / 1000.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            LatencyUnit::Micros => "µs",
            LatencyUnit::Millis => "ms",
        }
    }
}

/// The ticks of a log axis over `low..=high`: 1, 2 and 5 times the powers of ten, or every
/// multiple 1..=9 when that gives fewer than three.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let ticks = log_ticks_of(low, high, &[1.0, 2.0, 5.0]);
    if ticks.len() >= 3 {
        return ticks;
    }
    log_ticks_of(low, high, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
}

fn log_ticks_of(low: f64, high: f64, multiples: &[f64]) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(low > 0.0 && high >= low && high.is_finite()) {
        return ticks;
    }
    let mut decade = 10f64.powf(low.log10().floor());
    // Bounded: low > 0 and high is finite, so at most about 600 decades.
    while decade <= high {
        for multiple in multiples {
            let tick = decade * multiple;
            if tick >= low && tick <= high {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A tick's number: at most three significant digits, no trailing zeros (`0.05`, `2`, `500`).
fn tick_label(value: f64) -> String {
    if value == 0.0 || value.abs() >= 100.0 {
        return format!("{value:.0}");
    }
    let decimals = (2 - value.abs().log10().floor() as i64).clamp(0, 12) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// An operation rate's tick: `0`, `500`, `20k`, `1.5M`.
fn rate_label(ops_per_sec: f64) -> String {
    if ops_per_sec.abs() >= 1e6 {
        format!("{}M", tick_label(ops_per_sec / 1e6))
    } else if ops_per_sec.abs() >= 1e3 {
        format!("{}k", tick_label(ops_per_sec / 1e3))
    } else {
        tick_label(ops_per_sec)
    }
}

/// The smallest and largest of `values`, if any is positive and finite (log axes need that).
fn positive_bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|value| *value > 0.0 && value.is_finite()).fold(None, |bounds, value| match bounds {
        None => Some((value, value)),
        Some((low, high)) => Some((f64::min(low, value), f64::max(high, value))),
    })
}

/// The range of a log latency axis around `low..=high`, with room above and below.
fn log_axis_range(low: f64, high: f64) -> (f64, f64) {
    (low / 1.5, high * 1.5)
}

/// Registers the embedded font once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_DEJAVU_SANS).is_ok()
    });
    ensure!(registered, "the embedded DejaVuSans.ttf is not a font ab_glyph can read");
    Ok(())
}

fn text(pixels: u32) -> TextStyle<'static> {
    (FONT_FAMILY, pixels).into_text_style(&(WIDTH_PIXELS, HEIGHT_PIXELS))
}

fn color(index: usize) -> RGBColor {
    SERIES_COLORS[index % SERIES_COLORS.len()]
}

/// A chart's heading: what it shows, and under it, smaller, what was measured.
pub struct Heading {
    pub title: String,
    pub subtitle: String,
}

/// Writes a PNG of latency by percentile, one line per curve.
pub fn write_percentile_chart(path: &Path, heading: &Heading, curves: &[LatencyCurve]) -> Result<()> {
    write_png(path, |root| draw_percentile_chart(root, heading, curves))
}

type PngArea<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type PngError<'a> = DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

/// Draws a chart into an RGB buffer with `draw` and writes it to `path` as a PNG. The encoding
/// is the `png` crate's, not plotters' own file backend, which would build the `image` crate and
/// its codecs for the one format used.
fn write_png(path: &Path, draw: impl for<'a> FnOnce(&PngArea<'a>) -> Result<(), PngError<'a>>) -> Result<()> {
    register_font()?;
    let mut pixels = vec![0u8; WIDTH_PIXELS as usize * HEIGHT_PIXELS as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH_PIXELS, HEIGHT_PIXELS)).into_drawing_area();
        draw(&root).and_then(|()| root.present()).with_context(|| format!("drawing {}", path.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH_PIXELS, HEIGHT_PIXELS);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let written = encoder.write_header().and_then(|mut writer| {
        writer.write_image_data(&pixels)?;
        writer.finish()
    });
    written.with_context(|| format!("writing {}", path.display()))
}

/// Clears `root`, draws the heading at its top and returns the area under it.
fn titled<Backend: DrawingBackend>(
    root: &DrawingArea<Backend, Shift>,
    heading: &Heading,
) -> Result<DrawingArea<Backend, Shift>, DrawingAreaErrorKind<Backend::ErrorType>> {
    root.fill(&WHITE)?;
    let below_title = root.margin(16, 0, 0, 0).titled(&heading.title, text(TITLE_FONT_PIXELS))?;
    below_title.titled(&heading.subtitle, text(SUBTITLE_FONT_PIXELS))
}

fn draw_percentile_chart<Backend: DrawingBackend>(
    root: &DrawingArea<Backend, Shift>,
    heading: &Heading,
    curves: &[LatencyCurve],
) -> Result<(), DrawingAreaErrorKind<Backend::ErrorType>> {
    let plotted: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|curve| {
            let mut coordinates: Vec<(f64, f64)> = curve
                .points
                .iter()
                .map(|point| (nines(point.quantile, curve.count), point.latency_us))
                .collect();
            // The percentiles past 1 - 1/count all land on its x: keep the highest latency there,
            // so the line ends at the maximum instead of doubling back on itself.
            coordinates.dedup_by(|later, earlier| {
                let same_x = later.0 == earlier.0;
                if same_x {
                    earlier.1 = earlier.1.max(later.1);
                }
                same_x
            });
            coordinates
        })
        .collect();
    let all_points = || plotted.iter().flatten();
    let nines_max = all_points().map(|&(x, _)| x).fold(0.0, f64::max);
    let (low_us, high_us) = positive_bounds(all_points().map(|&(_, y)| y)).unwrap_or((1.0, 1000.0));
    let unit = LatencyUnit::for_max_us(high_us);
    let (axis_low, axis_high) = log_axis_range(unit.in_unit(low_us), unit.in_unit(high_us));
    let x_axis = NinesAxis { end: nines_axis_end(nines_max) };

    let area = titled(root, heading)?;
    let mut chart = ChartBuilder::on(&area)
        .margin(24)
        .margin_right(56)
        .x_label_area_size(70)
        .y_label_area_size(100)
        .build_cartesian_2d(
            x_axis,
            (axis_low..axis_high).log_scale().with_key_points(log_ticks(axis_low, axis_high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile (log scale of 1/(1 - percentile))")
        .y_desc(format!("latency ({}, log scale)", unit.name()))
        .y_label_formatter(&|latency| tick_label(*latency))
        .label_style(text(LABEL_FONT_PIXELS))
        .axis_desc_style(text(AXIS_DESCRIPTION_FONT_PIXELS))
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;
    for (index, (curve, points)) in curves.iter().zip(&plotted).enumerate() {
        let style = color(index).stroke_width(3);
        chart
            .draw_series(LineSeries::new(points.iter().map(|&(x, y)| (x, unit.in_unit(y))), style))?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(text(LABEL_FONT_PIXELS))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes a PNG of a sweep: each series' latency (log scale) against achieved throughput, the SLO
/// as a horizontal line and the highest rate meeting it as a vertical one.
pub fn write_sweep_chart(
    path: &Path,
    heading: &Heading,
    series: &[ThroughputSeries],
    marks: &SweepMarks,
) -> Result<()> {
    write_png(path, |root| draw_sweep_chart(root, heading, series, marks))
}

fn draw_sweep_chart<Backend: DrawingBackend>(
    root: &DrawingArea<Backend, Shift>,
    heading: &Heading,
    series: &[ThroughputSeries],
    marks: &SweepMarks,
) -> Result<(), DrawingAreaErrorKind<Backend::ErrorType>> {
    let all_points = || series.iter().flat_map(|series| &series.points);
    let rate_high = all_points().map(|point| point.ops_per_sec).fold(0.0, f64::max).max(1.0);
    let latencies = all_points().map(|point| point.latency_us).chain([marks.slo_us]);
    let (low_us, high_us) = positive_bounds(latencies).unwrap_or((1.0, 1000.0));
    let unit = LatencyUnit::for_max_us(high_us);
    let (axis_low, axis_high) = log_axis_range(unit.in_unit(low_us), unit.in_unit(high_us));
    let x_end = rate_high * 1.08;

    // The legend goes right of the plot: a sweep's runs can sit in any corner of it.
    let area = titled(root, heading)?;
    let (plot_area, legend_area) = area.split_horizontally(WIDTH_PIXELS - LEGEND_WIDTH_PIXELS);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(24)
        .x_label_area_size(70)
        .y_label_area_size(100)
        .build_cartesian_2d(
            0.0..x_end,
            (axis_low..axis_high).log_scale().with_key_points(log_ticks(axis_low, axis_high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (ops/s)")
        .y_desc(format!("latency ({}, log scale)", unit.name()))
        .x_label_formatter(&|rate| rate_label(*rate))
        .y_label_formatter(&|latency| tick_label(*latency))
        .label_style(text(LABEL_FONT_PIXELS))
        .axis_desc_style(text(AXIS_DESCRIPTION_FONT_PIXELS))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(TRANSPARENT)
        .draw()?;
    let mut legend = Vec::new();
    let slo = unit.in_unit(marks.slo_us);
    chart.draw_series(DashedLineSeries::new([(0.0, slo), (x_end, slo)], 12, 8, SLO_COLOR.stroke_width(2)))?;
    if let Some(best) = marks.best_ops_per_sec {
        let best_line = [(best, axis_low), (best, axis_high)];
        chart.draw_series(DashedLineSeries::new(best_line, 6, 6, BEST_RATE_COLOR.stroke_width(2)))?;
    }
    for (index, series) in series.iter().enumerate() {
        let color = color(index);
        let coordinates =
            || series.points.iter().map(|point| (point.ops_per_sec, unit.in_unit(point.latency_us)));
        chart.draw_series(LineSeries::new(coordinates(), color.stroke_width(3)))?;
        chart.draw_series(series.points.iter().map(|point| {
            run_marker((point.ops_per_sec, unit.in_unit(point.latency_us)), color, point.met)
        }))?;
        legend.push(LegendEntry { sample: LegendSample::Line(color), label: series.label.clone() });
    }
    legend.push(LegendEntry { sample: LegendSample::Marker { met: true }, label: "run met the SLO".into() });
    legend.push(LegendEntry {
        sample: LegendSample::Marker { met: false },
        label: "run broke the SLO\n(p99, errors or throughput)".into(),
    });
    legend.push(LegendEntry { sample: LegendSample::Dashed(SLO_COLOR), label: marks.slo_label.clone() });
    if marks.best_ops_per_sec.is_some() {
        legend.push(LegendEntry {
            sample: LegendSample::Dashed(BEST_RATE_COLOR),
            label: marks.best_label.clone(),
        });
    }
    draw_legend(&legend_area, &legend)
}

/// What a legend entry shows beside its label.
enum LegendSample {
    Line(RGBColor),
    Dashed(RGBColor),
    /// A sweep run's marker.
    Marker {
        met: bool,
    },
}

struct LegendEntry {
    sample: LegendSample,
    /// One or more lines of text.
    label: String,
}

/// A circle drawn in pixels around the point it is placed at.
type MarkerCircle = Circle<(i32, i32), i32>;

/// A sweep run's marker at `at`: a circle in the series' colour, filled if the run met the SLO,
/// hollow if it broke it.
fn run_marker<Coord, Backend: DrawingBackend>(
    at: Coord,
    color: RGBColor,
    met: bool,
) -> ComposedElement<Coord, Backend, MarkerCircle, MarkerCircle> {
    let fill = if met { color.filled() } else { WHITE.filled() };
    EmptyElement::at(at)
        + Circle::new((0, 0), MARKER_RADIUS_PIXELS, fill)
        + Circle::new((0, 0), MARKER_RADIUS_PIXELS, color.stroke_width(2))
}

/// Draws `entries` down `area`, a sample and its label per entry, from the top of the plot.
fn draw_legend<Backend: DrawingBackend>(
    area: &DrawingArea<Backend, Shift>,
    entries: &[LegendEntry],
) -> Result<(), DrawingAreaErrorKind<Backend::ErrorType>> {
    const SAMPLE_START: i32 = 4;
    const SAMPLE_END: i32 = 40;
    const LABEL_START: i32 = 52;
    const LINE_PIXELS: i32 = 24;
    const ENTRY_GAP_PIXELS: i32 = 10;
    let label_style = text(LABEL_FONT_PIXELS).pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 48;
    for entry in entries {
        match entry.sample {
            LegendSample::Line(color) => {
                area.draw(&PathElement::new([(SAMPLE_START, y), (SAMPLE_END, y)], color.stroke_width(3)))?
            }
            LegendSample::Dashed(color) => {
                for dash_start in (SAMPLE_START..SAMPLE_END).step_by(12) {
                    let dash = [(dash_start, y), (dash_start + 7, y)];
                    area.draw(&PathElement::new(dash, color.stroke_width(2)))?;
                }
            }
            LegendSample::Marker { met } => {
                let at = ((SAMPLE_START + SAMPLE_END) / 2, y);
                area.draw(&run_marker(at, BEST_RATE_COLOR, met))?
            }
        }
        let mut lines = 0;
        for line in entry.label.lines() {
            area.draw(&Text::new(line, (LABEL_START, y + lines * LINE_PIXELS), label_style.clone()))?;
            lines += 1;
        }
        y += lines.max(1) * LINE_PIXELS + ENTRY_GAP_PIXELS;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::LatencyRecorder;
    use std::time::Duration;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// The width and height in a PNG's header chunk, after checking the signature.
    fn png_dimensions(bytes: &[u8]) -> (u32, u32) {
        assert!(bytes.len() > 24, "{} bytes", bytes.len());
        assert_eq!(bytes[..8], PNG_SIGNATURE, "not a PNG");
        assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is the header");
        let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (word(16), word(20))
    }

    #[test]
    fn percentiles_map_to_one_tick_per_nine() {
        let close = |actual: f64, expected: f64| (actual - expected).abs() < 1e-9;
        let count = 1_000_000;
        assert!(close(nines(0.0, count), 0.0));
        assert!(close(nines(0.5, count), 2f64.log10()));
        assert!(close(nines(0.9, count), 1.0));
        assert!(close(nines(0.99, count), 2.0));
        assert!(close(nines(0.999, count), 3.0));
        assert!(close(nines(0.9999, count), 4.0));
        // 100% would be at infinity: it is drawn where a million operations stop resolving.
        assert!(close(nines(1.0, count), 6.0));
        assert!(close(nines(1.0, 1000), 3.0));
        assert!(close(nines(0.99999, 1000), 3.0));
        assert!(close(nines(1.0, 1), 0.0));
        assert!(close(nines(1.0, 0), 0.0));
        assert!(close(nines(-0.5, count), 0.0));
    }

    #[test]
    fn nines_read_as_percentiles() {
        let labels: Vec<String> = (0..=6).map(|nines| nines_label(f64::from(nines))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]);
        assert_eq!(nines_label(2f64.log10()), "50%");
        assert_eq!(nines_label(2.5), "99.7%");
    }

    #[test]
    fn the_percentile_axis_ends_past_the_last_point() {
        assert_eq!(nines_axis_end(0.0), 2.0);
        assert_eq!(nines_axis_end(2.9), 3.0);
        assert_eq!(nines_axis_end(3.0), 4.0);
        assert_eq!(nines_axis_end(5.3), 6.0);
    }

    #[test]
    fn latency_ticks_are_one_two_five_and_read_plainly() {
        assert_eq!(log_ticks(0.03, 12.0), [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]);
        assert_eq!(log_ticks(150.0, 600.0), [200.0, 300.0, 400.0, 500.0, 600.0]);
        assert!(log_ticks(0.0, 10.0).is_empty());
        let labels: Vec<String> = [0.05, 0.1, 0.2, 2.0, 50.0, 500.0, 20_000.0, 1.25].map(tick_label).into();
        assert_eq!(labels, ["0.05", "0.1", "0.2", "2", "50", "500", "20000", "1.25"]);
        assert_eq!(LatencyUnit::for_max_us(999.0), LatencyUnit::Micros);
        assert_eq!(LatencyUnit::for_max_us(1500.0), LatencyUnit::Millis);
        let rates: Vec<String> = [0.0, 500.0, 20_000.0, 1_500_000.0].map(rate_label).into();
        assert_eq!(rates, ["0", "500", "20k", "1.5M"]);
    }

    #[test]
    fn percentile_chart_is_a_png_of_its_size() {
        let mut fast = LatencyRecorder::new();
        let mut slow = LatencyRecorder::new();
        for index in 1..=20_000u64 {
            fast.record(Duration::from_micros(50 + index % 200));
            slow.record(Duration::from_micros(200 + (index % 1000) * (index % 7)));
        }
        slow.record(Duration::from_millis(40));
        let curves: Vec<LatencyCurve> = [("read", &fast), ("update", &slow)]
            .into_iter()
            .map(|(label, recorder)| LatencyCurve {
                label: format!("{label} ({} ops)", recorder.count()),
                count: recorder.count(),
                points: recorder.percentile_curve(),
            })
            .collect();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("latency.png");
        let heading = Heading {
            title: "latency by percentile".to_string(),
            subtitle: "workload a against ringkv://127.0.0.1:7379 · closed loop".to_string(),
        };
        write_percentile_chart(&path, &heading, &curves).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_dimensions(&bytes), (WIDTH_PIXELS, HEIGHT_PIXELS));
        // A blank or text-less image compresses to a few kilobytes; lines and labels take more.
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn sweep_chart_is_a_png_of_its_size() {
        let runs = [(10_000.0, 80.0, true), (20_000.0, 120.0, true), (28_000.0, 2500.0, false)];
        let series: Vec<ThroughputSeries> = [("p50", 1.0), ("p99", 4.0), ("p99.9", 9.0)]
            .into_iter()
            .map(|(label, factor)| ThroughputSeries {
                label: label.to_string(),
                points: runs
                    .iter()
                    .map(|&(ops_per_sec, latency_us, met)| ThroughputPoint {
                        ops_per_sec,
                        latency_us: latency_us * factor,
                        met,
                    })
                    .collect(),
            })
            .collect();
        let marks = SweepMarks {
            slo_us: 1000.0,
            slo_label: "SLO: p99 ≤ 1 ms".to_string(),
            best_ops_per_sec: Some(20_000.0),
            best_label: "highest rate meeting the SLO".to_string(),
        };
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sweep.png");
        let heading = Heading {
            title: "sweep: latency against throughput".to_string(),
            subtitle: "workload a against ringkv://127.0.0.1:7379 · SLO p99 ≤ 1 ms".to_string(),
        };
        write_sweep_chart(&path, &heading, &series, &marks).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_dimensions(&bytes), (WIDTH_PIXELS, HEIGHT_PIXELS));
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn a_chart_into_a_missing_directory_fails_with_its_path() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing").join("latency.png");
        let heading = Heading { title: "title".to_string(), subtitle: String::new() };
        let error = write_percentile_chart(&path, &heading, &[]).unwrap_err();
        assert!(format!("{error:#}").contains("missing/latency.png"), "{error:#}");
    }
}
