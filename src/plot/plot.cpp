// Training curves as SVG (include/lstmgrad/plot.hpp): metrics.jsonl text in, SVG text out.
#include "lstmgrad/plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

#include "lstmgrad/error.hpp"

namespace lstmgrad::plot {

using nlohmann::json;

Level parse_level(std::string_view name) {
  if (name == "word") return Level::word;
  if (name == "char") return Level::character;
  return Level::unknown;
}

// ---------------------------------------------------------------------------------------------
// Reading metrics.jsonl and results.json.

namespace {

// nlohmann's what() is "[json.exception.parse_error.101] parse error at line 1, column 7: why";
// the line is ours to give, so keep the column and the why.
std::string json_reason(const json::exception& e) {
  const std::string w = e.what();
  const size_t at = w.find("column ");
  return at == std::string::npos ? w : w.substr(at);
}

const json& field(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) throw InputError(fmt::format("{}: missing key '{}'", where, key));
  return *it;
}

int64_t integer_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_number_integer())
    throw InputError(fmt::format("{}: '{}' must be an integer, got {}", where, key, v.dump()));
  return v.get<int64_t>();
}

// A number, or absent for null (NaN and infinities reach JSON as null).
std::optional<double> loss_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (v.is_null()) return std::nullopt;
  if (!v.is_number())
    throw InputError(
        fmt::format("{}: '{}' must be a number or null, got {}", where, key, v.dump()));
  const double d = v.get<double>();
  return std::isfinite(d) ? std::optional<double>(d) : std::nullopt;
}

MetricsPoint parse_line(std::string_view line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    throw InputError(fmt::format("{}: malformed JSON at {}", where, json_reason(e)));
  }
  if (!j.is_object())
    throw InputError(fmt::format("{}: expected a JSON object, got {}", where, j.type_name()));
  MetricsPoint p;
  p.epoch = integer_field(j, "epoch", where);
  p.step = integer_field(j, "step", where);
  if (p.step < 0) throw InputError(fmt::format("{}: 'step' must be >= 0, got {}", where, p.step));
  const std::optional<double> lr = loss_field(j, "lr", where);
  if (!lr) throw InputError(fmt::format("{}: 'lr' must be a finite number, got null", where));
  p.lr = *lr;
  p.train_loss = loss_field(j, "train_loss", where);
  p.valid_loss = loss_field(j, "valid_loss", where);
  if (j.contains("wall_s")) p.wall_s = loss_field(j, "wall_s", where);
  return p;
}

}  // namespace

std::vector<MetricsPoint> parse_metrics(std::string_view text, const std::string& file) {
  std::vector<MetricsPoint> points;
  size_t begin = 0;
  for (int line = 1; begin < text.size(); ++line) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view l = text.substr(begin, end - begin);
    begin = end + 1;
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    points.push_back(parse_line(l, fmt::format("{}:{}", file, line)));
  }
  if (points.empty())
    throw InputError(fmt::format(
        "{}:1: empty: no validation lines yet (the trainer writes one per epoch)", file));
  return points;
}

std::optional<double> parse_test_loss(std::string_view text, const std::string& file) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw InputError(fmt::format("{}: malformed JSON at {}", file, json_reason(e)));
  }
  if (!j.is_object())
    throw InputError(fmt::format("{}: expected a JSON object, got {}", file, j.type_name()));
  if (!j.contains("test_loss")) return std::nullopt;
  return loss_field(j, "test_loss", file);
}

// ---------------------------------------------------------------------------------------------
// Ticks and scales.

namespace {

// 1, 2 or 5 times a power of ten, near raw.
double nice_step(double raw) {
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

// Digits after the point that tick labels `step` apart need.
int decimals(double step) {
  return std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(lo < hi) || target < 2)
    throw std::invalid_argument("nice_ticks: need lo < hi, target >= 2");
  const double step = nice_step((hi - lo) / (target - 1));
  const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last; ++k) ticks.push_back(k * step);
  return ticks;
}

namespace {

struct Pt {
  double x = 0, y = 0;
};
struct Box {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  Box inflated(double d) const { return {x0 - d, y0 - d, x1 + d, y1 + d}; }
  bool contains(const Box& b) const { return b.x0 >= x0 && b.x1 <= x1 && b.y0 >= y0 && b.y1 <= y1; }
  bool overlaps(const Box& b) const { return b.x0 < x1 && x0 < b.x1 && b.y0 < y1 && y0 < b.y1; }
};

// Data interval [d0, d1] onto pixels [p0, p1].
struct Scale {
  double d0 = 0, d1 = 1, p0 = 0, p1 = 1;
  double operator()(double v) const { return p0 + (v - d0) / (d1 - d0) * (p1 - p0); }
};

// Does segment ab cross box r? (Liang-Barsky clipping.)
bool crosses(Pt a, Pt b, const Box& r) {
  double t0 = 0, t1 = 1;
  const double dx = b.x - a.x, dy = b.y - a.y;
  const double p[4] = {-dx, dx, -dy, dy};
  const double q[4] = {a.x - r.x0, r.x1 - a.x, a.y - r.y0, r.y1 - a.y};
  for (int k = 0; k < 4; ++k) {
    if (p[k] == 0) {
      if (q[k] < 0) return false;
      continue;
    }
    const double t = q[k] / p[k];
    if (p[k] < 0) t0 = std::max(t0, t);
    if (p[k] > 0) t1 = std::min(t1, t);
    if (t0 > t1) return false;
  }
  return true;
}

// Width of text in a sans-serif face, estimated (no font metrics in an SVG writer): digits and
// lower case are about 0.56 em, upper case wider, spaces and punctuation narrower.
double text_width(std::string_view s, double size) {
  double em = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) == 0x80) continue;  // UTF-8 continuation byte
    em += c == ' ' || c == '.' || c == ',' || c == ':' || c == '(' || c == ')' ? 0.3
          : std::isupper(c)                                                    ? 0.66
                                                                               : 0.56;
  }
  return em * size;
}

std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// 9282 -> "9,282".
std::string grouped(int64_t v) {
  const std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out = v < 0 ? "-" : "";
  for (size_t k = 0; k < digits.size(); ++k) {
    if (k > 0 && (digits.size() - k) % 3 == 0) out += ',';
    out += digits[k];
  }
  return out;
}

std::string duration(double s) {
  const auto t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h {:02}m", t / 3600, t % 3600 / 60);
  if (t >= 60) return fmt::format("{}m {:02}s", t / 60, t % 60);
  return s < 10 ? fmt::format("{:.1f}s", s) : fmt::format("{}s", t);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The figure.

namespace {

constexpr const char* kFont =
    "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";
constexpr const char* kInk = "#1f2937";
constexpr const char* kMuted = "#6b7280";
constexpr const char* kGrid = "#e5e7eb";
constexpr const char* kAxis = "#9ca3af";
constexpr const char* kTrain = "#2563eb";
constexpr const char* kValid = "#ea580c";
constexpr const char* kTest = "#059669";
constexpr const char* kLr = "#7c3aed";

enum class Series { train, valid };

std::optional<double> value(const MetricsPoint& p, Series s) {
  return s == Series::train ? p.train_loss : p.valid_loss;
}

struct YRange {
  double lo = 0, hi = 1;
  std::vector<double> ticks;
};

// From the lowest loss to a robust upper bound. The first epoch's mean train loss includes the
// untrained model's ln V, so the values after the first few points (1 in 20, at least one) set the
// scale: the range is cut at 60% of their spread above them, if that magnifies them at least 1.5
// times; the points above are marked at the top edge (draw_off_scale).
YRange choose_y_range(const std::vector<MetricsPoint>& pts, std::optional<double> test) {
  const size_t n = pts.size(), skip = n >= 3 ? std::max<size_t>(1, n / 20) : 0;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, tail = -lo;
  auto see = [&](double v, bool in_tail) {
    lo = std::min(lo, v), hi = std::max(hi, v);
    if (in_tail) tail = std::max(tail, v);
  };
  for (size_t i = 0; i < n; ++i)
    for (Series s : {Series::train, Series::valid})
      if (const auto v = value(pts[i], s)) see(*v, i >= skip);
  if (test) see(*test, true);
  if (!std::isfinite(lo)) lo = 0, hi = 1, tail = 1;  // no loss at all (every value null)
  if (!std::isfinite(tail)) tail = hi;
  const double min_span = std::max(0.05, 0.02 * std::abs(lo));
  const double cut = std::max(tail + 0.6 * (tail - lo), lo + min_span);
  const bool clip = skip > 0 && hi - lo > 1.5 * (cut - lo);
  double top = clip ? cut : hi;
  if (top - lo < min_span) {  // one value, or nearly: centre it
    const double mid = (lo + top) / 2;
    lo = mid - min_span / 2, top = mid + min_span / 2;
  }
  // A little room so that no marker sits on the frame; the ticks are the round values inside.
  const double pad = 0.04 * (top - lo);
  YRange y;
  y.lo = lo - pad, y.hi = clip ? top : top + pad;
  for (double t : nice_ticks(y.lo, y.hi, 6))
    if (t >= y.lo - 1e-9 && t <= y.hi + 1e-9) y.ticks.push_back(t);
  return y;
}

// Where each epoch ends (the step of its last validation), in step order.
struct EpochSpan {
  int64_t epoch = 0, begin = 0, end = 0;
};

std::vector<EpochSpan> epoch_spans(const std::vector<MetricsPoint>& pts) {
  std::vector<EpochSpan> spans;
  for (const MetricsPoint& p : pts) {
    if (spans.empty() || spans.back().epoch != p.epoch)
      spans.push_back({p.epoch, spans.empty() ? 0 : spans.back().end, p.step});
    spans.back().end = std::max(spans.back().end, p.step);
  }
  return spans;
}

struct Figure {
  const RunCurves& run;
  std::vector<MetricsPoint> pts;  // sorted by step
  double W, H;
  Box plot;  // the data area
  Scale x, y;
  YRange yr;
  std::string svg;
  std::vector<Box> taken;  // labels placed so far, kept clear by later ones

  template <class... Args>
  void put(fmt::format_string<Args...> f, Args&&... args) {
    fmt::format_to(std::back_inserter(svg), f, std::forward<Args>(args)...);
    svg += '\n';
  }
  void text(double px, double py, std::string_view s, double size, const char* fill,
            const char* anchor = "start", const char* extra = "") {
    put(R"(<text x="{:.1f}" y="{:.1f}" font-size="{}" fill="{}" text-anchor="{}"{}>{}</text>)", px,
        py, size, fill, anchor, extra, escape(s));
  }
  bool off_scale(double v) const { return v > yr.hi + 1e-12; }
  // The pixel of a loss; off-scale values sit above the plot (lines to them leave through the top).
  Pt at(int64_t step, double loss) const { return {x(static_cast<double>(step)), y(loss)}; }
};

// ---- axes ----

std::string step_label(double v, double xmax) {
  const auto s = static_cast<int64_t>(std::llround(v));
  if (xmax >= 20000 && s % 1000 == 0) return fmt::format("{}k", s / 1000);
  return grouped(s);
}

void draw_y_axis(Figure& f) {
  const int d = decimals(f.yr.ticks.size() > 1 ? f.yr.ticks[1] - f.yr.ticks[0] : 1);
  for (double t : f.yr.ticks) {
    const double py = f.y(t);
    f.put(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}"/>)", f.plot.x0, py,
          f.plot.x1, py, kGrid);
    f.text(f.plot.x0 - 8, py + 4, fmt::format("{:.{}f}", t, d), 11, kMuted, "end");
  }
  const char* unit = f.run.level == Level::character ? "loss (nats/char)" : "loss (nats/token)";
  const double cy = (f.plot.y0 + f.plot.y1) / 2;
  f.text(18, cy, unit, 12, kInk, "middle",
         fmt::format(R"~( transform="rotate(-90 18 {:.1f})")~", cy).c_str());
  f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}"/>)", f.plot.x0,
        f.plot.y0, f.plot.y1, kAxis);
}

void draw_x_axis(Figure& f) {
  const double xmax = f.x.d1;
  const double limit = f.x.d0 + (f.plot.x1 - f.x.p0) / (f.x.p1 - f.x.p0) * (f.x.d1 - f.x.d0);
  for (double t : nice_ticks(0, xmax, 7)) {
    if (t > limit) break;
    const double px = f.x(t);
    f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}"/>)", px,
          f.plot.y1, f.plot.y1 + 5, kAxis);
    f.text(px, f.plot.y1 + 18, step_label(t, xmax), 11, kMuted, "middle");
  }
  f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{2:.1f}" y2="{1:.1f}" stroke="{3}"/>)", f.plot.x0,
        f.plot.y1, f.plot.x1, kAxis);
  f.text((f.plot.x0 + f.plot.x1) / 2, f.plot.y1 + 38, "updates (training steps)", 12, kInk,
         "middle");
}

// Perplexity ticks on a log scale: the densest of 1-2-5-like sets whose labels stay 18 px apart;
// over a narrow range, round values in between.
std::vector<double> perplexity_ticks(const Figure& f) {
  static const std::vector<std::vector<double>> sets = {
      {1}, {1, 2, 5}, {1, 1.5, 2, 3, 5, 7}, {1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9}};
  const double p0 = std::exp(f.yr.lo), p1 = std::exp(f.yr.hi);
  std::vector<double> best;
  for (const auto& set : sets) {
    std::vector<double> ticks;
    for (double mag = std::pow(10.0, std::floor(std::log10(p0))); mag <= p1; mag *= 10)
      for (double m : set)
        if (m * mag >= std::max(1.0, p0 * (1 - 1e-9)) && m * mag <= p1 * (1 + 1e-9))
          ticks.push_back(m * mag);
    bool crowded = false;
    for (size_t k = 1; k < ticks.size(); ++k)
      crowded |= f.y(std::log(ticks[k - 1])) - f.y(std::log(ticks[k])) < 18;
    if (crowded) break;
    best = std::move(ticks);
    if (best.size() >= 4) return best;
  }
  if (best.size() >= 3) return best;
  std::vector<double> linear;
  for (double t : nice_ticks(p0, p1, 5))
    if (t >= p0 && t <= p1) linear.push_back(t);
  return linear.size() >= best.size() ? linear : best;
}

void draw_right_axis(Figure& f) {
  if (f.run.level == Level::unknown) return;
  const bool word = f.run.level == Level::word;
  std::vector<std::pair<double, std::string>> ticks;  // (loss, label)
  if (word) {
    for (double p : perplexity_ticks(f)) ticks.emplace_back(std::log(p), fmt::format("{:g}", p));
  } else {
    const double ln2 = std::log(2.0);
    const std::vector<double> b = nice_ticks(f.yr.lo / ln2, f.yr.hi / ln2, 6);
    const int d = decimals(b.size() > 1 ? b[1] - b[0] : 1);
    for (double t : b)
      if (t * ln2 >= f.yr.lo - 1e-9 && t * ln2 <= f.yr.hi + 1e-9)
        ticks.emplace_back(t * ln2, fmt::format("{:.{}f}", t, d));
  }
  const double rx = f.plot.x1;
  f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}"/>)", rx,
        f.plot.y0, f.plot.y1, kAxis);
  for (const auto& [loss, label] : ticks) {
    const double py = f.y(loss);
    f.put(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}"/>)", rx, py, rx + 5,
          py, kAxis);
    f.text(rx + 8, py + 4, label, 11, kMuted);
  }
  const double cx = f.W - 16, cy = (f.plot.y0 + f.plot.y1) / 2;
  f.text(cx, cy, word ? "perplexity (log scale)" : "bits per character", 12, kInk, "middle",
         fmt::format(R"~( transform="rotate(90 {:.1f} {:.1f})")~", cx, cy).c_str());
}

// ---- epochs and learning rate, in rows above the plot ----

// For items `px` pixels apart, the k in 1, 2, 5, 10, 20, ... such that every k-th item is at least
// `gap` pixels from the next.
int64_t thinning(double px, double gap) {
  if (!(px > 0)) return std::numeric_limits<int64_t>::max();
  for (int64_t mag = 1;; mag *= 10)
    for (int64_t m : {1, 2, 5})
      if (static_cast<double>(m * mag) * px >= gap) return m * mag;
}

void draw_epochs(Figure& f, double row_y) {
  const std::vector<EpochSpan> spans = epoch_spans(f.pts);
  const double per_epoch =
      (f.x(static_cast<double>(spans.back().end)) - f.plot.x0) / static_cast<double>(spans.size());
  const int64_t line_every = thinning(per_epoch, 16), label_every = thinning(per_epoch, 24);
  f.text(f.plot.x0 - 8, row_y, "epoch", 11, kMuted, "end");
  for (size_t i = 0; i < spans.size(); ++i) {
    const EpochSpan& e = spans[i];
    const double b = f.x(static_cast<double>(e.begin)), end = f.x(static_cast<double>(e.end));
    if (i + 1 < spans.size() && e.epoch % line_every == 0)
      f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}"/>)", end,
            row_y - 11, f.plot.y1, kGrid);
    if (e.epoch % label_every == 0 || spans.size() == 1)
      f.text((b + end) / 2, row_y, std::to_string(e.epoch), 11, kMuted, "middle");
  }
}

// The lr of each validation is that of the epoch it ends, so a change happens at the boundary
// before it: a dashed line there, and the new value in the lr row.
bool lr_changes(const std::vector<MetricsPoint>& pts, size_t i) {
  return i > 0 && std::abs(pts[i].lr - pts[i - 1].lr) > 1e-12 * std::abs(pts[i - 1].lr);
}

void draw_lr(Figure& f, double row_y) {
  std::vector<std::pair<double, double>> changes;  // (pixel, new lr)
  for (size_t i = 1; i < f.pts.size(); ++i)
    if (lr_changes(f.pts, i))
      changes.emplace_back(f.x(static_cast<double>(f.pts[i - 1].step)), f.pts[i].lr);
  if (changes.empty()) return;
  f.text(f.plot.x0 - 8, row_y, "lr", 11, kLr, "end");
  f.text(f.plot.x0 + 4, row_y, fmt::format("{:.3g}", f.pts.front().lr), 11, kLr);
  double free_from = f.plot.x0 + 4 + text_width(fmt::format("{:.3g}", f.pts.front().lr), 11) + 6;
  for (const auto& [px, lr] : changes) {
    f.put(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}")"
          R"( stroke-opacity="0.45" stroke-dasharray="3 3"/>)",
          px, row_y - 11, f.plot.y1, kLr);
    const std::string label = fmt::format("{:.3g}", lr);
    if (px + 3 < free_from) continue;  // would overlap the previous label
    f.text(px + 3, row_y, label, 11, kLr);
    free_from = px + 3 + text_width(label, 11) + 6;
  }
}

// ---- curves ----

// Marker radius for the density of points: none when they are closer than 5 px.
double marker_radius(const Figure& f) {
  const double gap = (f.plot.x1 - f.plot.x0) / static_cast<double>(f.pts.size());
  return gap < 5 ? 0 : gap < 10 ? 2 : 3.2;
}

// The curve as pixel runs (a null value breaks it); returns them for label placement.
std::vector<std::vector<Pt>> draw_series(Figure& f, Series s) {
  std::vector<std::vector<Pt>> runs(1);
  for (const MetricsPoint& p : f.pts) {
    const auto v = value(p, s);
    if (!v) {
      if (!runs.back().empty()) runs.emplace_back();
      continue;
    }
    runs.back().push_back(f.at(p.step, *v));
  }
  if (runs.back().empty()) runs.pop_back();
  const bool train = s == Series::train;
  std::string d;
  for (const auto& run : runs)
    for (size_t k = 0; k < run.size(); ++k)
      d += fmt::format("{}{:.1f} {:.1f}", k == 0 ? "M" : " L", run[k].x, run[k].y);
  if (!d.empty())
    f.put(R"(<path class="{}" d="{}" fill="none" stroke="{}" stroke-width="{}")"
          R"~( stroke-linejoin="round" stroke-linecap="round" clip-path="url(#plot-area)"/>)~",
          train ? "train" : "valid", d, train ? kTrain : kValid, train ? 1.8 : 2.2);
  const double r = marker_radius(f);
  for (const auto& run : runs)
    for (const Pt& q : run) {
      const double rq = r > 0 ? r : run.size() == 1 ? 2 : 0;  // a lone point has no line
      if (rq == 0 || q.y < f.plot.y0 - 1) continue;  // off-scale points are marked at the edge
      if (train)
        f.put(R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="#ffffff" stroke="{}")"
              R"( stroke-width="1.5"/>)",
              q.x, q.y, rq, kTrain);
      else
        f.put(R"(<circle cx="{:.1f}" cy="{:.1f}" r="{}" fill="{}" stroke="#ffffff")"
              R"( stroke-width="1"/>)",
              q.x, q.y, rq, kValid);
    }
  return runs;
}

// Points above the y range: a triangle at the top edge and, where there is room, the value. Two
// series off scale at the same update stack their triangles.
void draw_off_scale(Figure& f) {
  std::vector<std::pair<double, int>> used;  // (pixel x, rows taken there)
  for (Series s : {Series::train, Series::valid}) {
    const char* color = s == Series::train ? kTrain : kValid;
    for (const MetricsPoint& p : f.pts) {
      const auto v = value(p, s);
      if (!v || !f.off_scale(*v)) continue;
      const double px = f.x(static_cast<double>(p.step));
      int row = 0;
      for (auto& [ux, rows] : used)
        if (std::abs(ux - px) < 6) row = rows++;
      if (row == 0) used.emplace_back(px, 1);
      const double top = f.plot.y0 + 1 + 13 * row;
      f.put(
          R"(<path d="M{:.1f} {:.1f} l-5 8 h10 z" fill="{}" stroke="#ffffff" stroke-width="0.8"/>)",
          px, top, color);
      const std::string label = fmt::format("{:.2f}", *v);
      const Box b{px + 8, top, px + 8 + text_width(label, 11), top + 12};
      bool free = f.plot.contains(b);
      for (const Box& t : f.taken) free = free && !t.overlaps(b);
      if (!free) continue;
      f.text(b.x0, top + 9.5, label, 11, color, "start",
             R"( font-weight="600" stroke="#ffffff" stroke-width="3" paint-order="stroke")");
      f.taken.push_back(b);
    }
  }
}

// ---- the callout: best validation point and test result ----

struct Callout {
  Pt anchor;
  std::vector<std::pair<std::string, const char*>> lines;  // text, color
};

std::string loss_words(double loss, Level level) {
  switch (level) {
    case Level::word:
      return fmt::format("ppl {:.1f} ({:.3f} nats)", std::exp(loss), loss);
    case Level::character:
      return fmt::format("{:.3f} bits/char ({:.3f} nats)", loss / std::log(2.0), loss);
    default:
      return fmt::format("loss {:.3f} nats", loss);
  }
}

// Places a box of size w x h near `a`, where it crosses the fewest curve segments and earlier
// labels, inside the plot, and as close as that allows.
Box place(const Figure& f, Pt a, double w, double h, const std::vector<std::vector<Pt>>& curves) {
  Box best;
  double best_cost = std::numeric_limits<double>::infinity();
  const Box inside = f.plot.inflated(-4);
  for (double dy : {-h - 14, 14.0, -h / 2, -h - 46, 46.0, -h - 90, 90.0, -h - 140, 140.0})
    for (double dx : {14.0, -14 - w, -w / 2, 60.0, -60 - w}) {
      const Box b{a.x + dx, a.y + dy, a.x + dx + w, a.y + dy + h};
      double cost = std::hypot(dx + w / 2, dy + h / 2) * 0.05;
      if (!inside.contains(b)) cost += 1000;
      const Box pad = b.inflated(4);
      for (const auto& run : curves)
        for (size_t k = 0; k < run.size(); ++k)
          cost += crosses(run[k], run[k + 1 < run.size() ? k + 1 : k], pad) ? 100 : 0;
      for (const Box& t : f.taken) cost += t.overlaps(pad) ? 100 : 0;
      if (cost < best_cost) best_cost = cost, best = b;
    }
  return best;
}

void draw_callout(Figure& f, const Callout& c, const std::vector<std::vector<Pt>>& curves) {
  if (c.lines.empty()) return;
  double w = 0;
  for (const auto& [s, color] : c.lines) w = std::max(w, text_width(s, 12));
  w += 16;
  const double h = 10 + 17 * static_cast<double>(c.lines.size());
  const Box b = place(f, c.anchor, w, h, curves);
  // A leader from the ring around the point to the nearest point of the box.
  const Pt n{std::clamp(c.anchor.x, b.x0, b.x1), std::clamp(c.anchor.y, b.y0, b.y1)};
  const double dist = std::hypot(n.x - c.anchor.x, n.y - c.anchor.y);
  if (dist > 12) {
    const double ux = (n.x - c.anchor.x) / dist, uy = (n.y - c.anchor.y) / dist;
    f.put(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="1"/>)",
          c.anchor.x + 8 * ux, c.anchor.y + 8 * uy, n.x, n.y, kAxis);
  }
  f.put(R"(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" rx="4" fill="#ffffff")"
        R"( fill-opacity="0.92" stroke="{}"/>)",
        b.x0, b.y0, w, h, kGrid);
  for (size_t k = 0; k < c.lines.size(); ++k)
    f.text(b.x0 + 8, b.y0 + 20 + 17 * static_cast<double>(k), c.lines[k].first, 12,
           c.lines[k].second, "start", k == 0 ? R"( font-weight="600")" : "");
  f.taken.push_back(b);
}

// The best validation point (ring) and the test result of the best model (the trainer tests the
// parameters of the best validation), as a diamond on the right edge where the perplexity or
// bits-per-character axis reads it: at the best update it would hide the ring.
Callout best_and_test(Figure& f) {
  Callout c;
  const MetricsPoint* best = nullptr;
  for (const MetricsPoint& p : f.pts)
    if (p.valid_loss && (!best || *p.valid_loss < *best->valid_loss)) best = &p;
  if (best) {
    c.anchor = f.at(best->step, *best->valid_loss);
    f.put(R"(<circle cx="{:.1f}" cy="{:.1f}" r="7" fill="none" stroke="{}" stroke-width="1.5"/>)",
          c.anchor.x, c.anchor.y, kValid);
    f.taken.push_back(Box{c.anchor.x, c.anchor.y, c.anchor.x, c.anchor.y}.inflated(8));
    c.lines.emplace_back(fmt::format("best valid {} \u00b7 epoch {}",
                                     loss_words(*best->valid_loss, f.run.level), best->epoch),
                         "#c2410c");
  }
  if (f.run.test_loss) {
    const Pt d{f.plot.x1, f.y(std::min(*f.run.test_loss, f.yr.hi))};
    if (!best) c.anchor = d;
    f.put(R"(<path d="M{:.1f} {:.1f} l6 6 l-6 6 l-6 -6 z" fill="{}" stroke="#ffffff"/>)", d.x,
          d.y - 6, kTest);
    f.taken.push_back(Box{d.x, d.y, d.x, d.y}.inflated(7));
    c.lines.emplace_back(fmt::format("test {}", loss_words(*f.run.test_loss, f.run.level)),
                         "#047857");
  }
  return c;
}

// ---- title, subtitle, legend ----

// Legend, right-aligned on the title line: only what the figure shows. Returns its left edge.
double draw_legend(Figure& f) {
  bool has_valid = false;
  for (const MetricsPoint& p : f.pts) has_valid |= p.valid_loss.has_value();
  std::vector<std::pair<std::string, int>> items = {{"train (epoch mean)", 0}};
  if (has_valid) items.emplace_back("validation", 1);
  // Without validation the trainer's best model is the last one.
  if (f.run.test_loss)
    items.emplace_back(has_valid ? "test (best model)" : "test (final model)", 2);
  const double ly = 23;
  double xr = f.W - 16;
  for (auto it = items.rbegin(); it != items.rend(); ++it) {
    const double x0 = xr - text_width(it->first, 12) - 30;
    if (it->second == 2) {
      f.put(R"(<path d="M{:.1f} {:.1f} l6 6 l-6 6 l-6 -6 z" fill="{}"/>)", x0 + 12, ly - 6, kTest);
    } else {
      const char* color = it->second == 0 ? kTrain : kValid;
      f.put(
          R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2"/>)",
          x0, ly, x0 + 24, ly, color);
      f.put(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.2" fill="{}" stroke="{}" stroke-width="1.5"/>)",
            x0 + 12, ly, it->second == 0 ? "#ffffff" : color, color);
    }
    f.text(x0 + 30, ly + 4, it->first, 12, kInk);
    xr = x0 - 16;
  }
  return xr;
}

// The run's name (shortened with an ellipsis to end before `right`) and what it was, in brief.
void draw_title(Figure& f, double right) {
  std::string title = f.run.title.empty() ? "training curves" : f.run.title;
  const double x0 = 20;
  if (text_width(title, 17 * 1.07) > right - x0) {  // bold is about 7% wider
    while (!title.empty() && text_width(title + "...", 17 * 1.07) > right - x0) title.pop_back();
    while (!title.empty() && (static_cast<unsigned char>(title.back()) & 0xC0) == 0x80)
      title.pop_back();  // not inside a UTF-8 sequence
    if (!title.empty()) title.pop_back();
    title += "\u2026";
  }
  f.text(x0, 27, title, 17, kInk, "start", R"( font-weight="700")");
  std::vector<std::string> facts;
  if (f.run.level != Level::unknown)
    facts.push_back(f.run.level == Level::word ? "word level" : "character level");
  const int64_t epochs = f.pts.back().epoch;
  facts.push_back(fmt::format("{} epoch{}", epochs, epochs == 1 ? "" : "s"));
  facts.push_back(fmt::format("{} updates", grouped(f.pts.back().step)));
  if (f.pts.back().wall_s) facts.push_back(duration(*f.pts.back().wall_s) + " training");
  std::string sub;
  for (const std::string& s : facts) sub += (sub.empty() ? "" : "  \u00b7  ") + s;
  f.text(x0, 46, sub, 12, kMuted);
}

}  // namespace

std::string render_svg(const RunCurves& run, int width, int height) {
  if (run.points.empty()) throw std::invalid_argument("render_svg: no points");
  Figure f{run, run.points, static_cast<double>(width), static_cast<double>(height), {}, {}, {}, {},
           {},  {}};
  std::stable_sort(f.pts.begin(), f.pts.end(),
                   [](const MetricsPoint& a, const MetricsPoint& b) { return a.step < b.step; });
  bool lr_row = false;
  for (size_t i = 1; i < f.pts.size(); ++i) lr_row |= lr_changes(f.pts, i);
  const double right = run.level == Level::unknown ? 28 : 72;
  f.plot = {64, lr_row ? 100.0 : 82.0, f.W - right, f.H - 56};
  f.yr = choose_y_range(f.pts, run.test_loss);
  const double xmax = std::max<double>(1, static_cast<double>(f.pts.back().step));
  f.x = {0, xmax, f.plot.x0, f.plot.x1 - 14};  // room for the last marker
  f.y = {f.yr.lo, f.yr.hi, f.plot.y1, f.plot.y0};

  f.put(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}")"
        R"( font-family="{2}">)",
        width, height, kFont);
  f.put("<title>{}</title>", escape(run.title.empty() ? "training curves" : run.title));
  f.put(R"(<rect width="100%" height="100%" fill="#ffffff"/>)");
  f.put(R"(<defs><clipPath id="plot-area">)"
        R"(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}"/></clipPath></defs>)",
        f.plot.x0, f.plot.y0, f.plot.x1 - f.plot.x0, f.plot.y1 - f.plot.y0 + 4);
  draw_y_axis(f);
  draw_epochs(f, lr_row ? 68 : 72);
  draw_lr(f, 88);
  draw_x_axis(f);
  draw_right_axis(f);
  std::vector<std::vector<Pt>> curves = draw_series(f, Series::train);
  for (auto& r : draw_series(f, Series::valid)) curves.push_back(std::move(r));
  draw_off_scale(f);
  draw_callout(f, best_and_test(f), curves);
  draw_title(f, draw_legend(f));
  f.put("</svg>");
  return std::move(f.svg);
}

}  // namespace lstmgrad::plot
