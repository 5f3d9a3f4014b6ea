// The handout's Figure 1 and its unrolled version, built as data. Formulas: docs/derivation.md,
// "Exercise 1", "Exercise 2", "Backpropagation through time" and "Equation 3 at t = 2".
#include "lstmgrad/graph.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lstmgrad/cell.hpp"
#include "lstmgrad/loss.hpp"

namespace lstmgrad {

const GraphNode& ComputationGraph::node(std::string_view id) const {
  for (const GraphNode& n : nodes)
    if (n.id == id) return n;
  throw std::out_of_range(fmt::format("graph: no node '{}'", id));
}

namespace {

std::string num6(double v) {
  return fmt::format("{:.6g}", v);
}

std::string vec6(const std::vector<double>& v) {
  if (v.size() == 1) return num6(v[0]);
  std::string out = "(";
  for (size_t k = 0; k < v.size(); ++k) out += (k ? ", " : "") + num6(v[k]);
  return out + ")";
}

std::vector<double> scaled(const std::vector<double>& v, double c) {
  std::vector<double> out(v);
  for (double& e : out) e *= c;
  return out;
}

GraphNode make_node(std::string id, std::string name, NodeKind kind, std::vector<double> value,
                    std::string formula = {}, std::vector<double> grad = {}, std::string note = {},
                    int step = 0) {
  GraphNode n;
  n.id = std::move(id), n.name = std::move(name), n.formula = std::move(formula);
  n.value = std::move(value), n.grad = std::move(grad), n.note = std::move(note);
  n.kind = kind, n.step = step;
  return n;
}

GraphEdge make_edge(std::string from, std::string to, EdgeKind kind, std::string label = {},
                    std::string factor = {}, std::vector<double> local = {}, std::string of = {}) {
  GraphEdge e;
  e.from = std::move(from), e.to = std::move(to), e.label = std::move(label);
  e.of = std::move(of), e.factor = std::move(factor), e.local = std::move(local);
  e.kind = kind;
  return e;
}

// ---------------------------------------------------------------------------------------------
// Figure 1: Exercise 2 at t = 1, scalar nodes.

std::vector<GraphNode> figure1_nodes(const HandoutValues& v, const Exercise2& e) {
  const double dL_ds = e.dL_dh * e.dh_ds, dL_da = dL_ds * e.ds_da;
  const double dL_dq = dL_da * (1 - e.a * e.a);  // a_1^1 = tanh(q_1)
  const NodeKind in = NodeKind::kInput, par = NodeKind::kParameter, op = NodeKind::kOperation;
  return {
      make_node("x1", "x^1", in, v.x, {}, {}, "input"),
      make_node("Va1", "V_a1", par, v.Va1, {}, e.dL_dVa1, "row 1 of V_a: Figure 1 is w.r.t. it"),
      make_node("h0", "h^0", in, v.h0, {}, {}, "initial state, a constant"),
      make_node("Ua1", "U_a1", par, v.Ua1, {}, scaled(v.h0, dL_dq)),
      make_node("b1", "b_1", par, {v.b1}, {}, {dL_dq}),
      make_node("q1", "q_1", op, {e.q}, "V_a1 x^1 + U_a1 h^0 + b_1", {dL_dq}, "Equation 7"),
      make_node("a1", "a_1^1", op, {e.a}, "tanh(q_1)", {dL_da}, "Equation 2"),
      make_node("i1", "i_1^1", in, {v.i1}, {}, {}, "given"),
      make_node("f1", "f_1^1", in, {v.f1}, {}, {},
                v.f1 == 1.0 ? "not given; the hint implies 1" : "given"),
      make_node("s0", "s_1^0", in, {v.s0}, {}, {}, "given"),
      make_node("s1", "s_1^1", op, {e.s}, "i_1^1 a_1^1 + f_1^1 s_1^0", {dL_ds}),
      make_node("o1", "o_1^1", in, {v.o1}, {}, {}, "given"),
      make_node("h1", "h_1^1", op, {e.h}, "o_1^1 tanh(s_1^1)", {e.dL_dh}),
      make_node("p1", "p_1^1", op, {v.p1}, "softmax(h^1)_1", {}, "given, not computed from h^1"),
      make_node("y1", "y_1^1", in, {v.y1}, {}, {}, "gold"),
      make_node("L1", "L^1", NodeKind::kLoss, {}, "-Σ_k y_k^1 log p_k^1", {},
                "no value: Exercise 2 gives p_1^1, y_1^1 only\n"
                "and needs only ∂L^1/∂h_1^1 = p_1^1 - y_1^1"),
  };
}

std::vector<GraphEdge> figure1_edges(const HandoutValues& v, const Exercise2& e) {
  const EdgeKind chain = EdgeKind::kGradient, k = EdgeKind::kConstant;
  return {
      make_edge("x1", "q1", k),
      make_edge("Va1", "q1", chain, {}, "(x^1)^T", v.x),
      make_edge("h0", "q1", k),
      make_edge("Ua1", "q1", k),
      make_edge("b1", "q1", k),
      make_edge("q1", "a1", chain, "tanh", "1 - tanh^2(q_1)", {1 - e.a * e.a}),
      make_edge("a1", "s1", chain, "× i_1^1", "i_1^1", {e.ds_da}),
      make_edge("i1", "s1", k),
      make_edge("f1", "s1", k),
      make_edge("s0", "s1", k),
      make_edge("s1", "h1", chain, "tanh, × o_1^1", "o_1^1 (1 - tanh^2(s_1^1))", {e.dh_ds}),
      make_edge("o1", "h1", k),
      make_edge("h1", "p1", chain, "softmax (then cross-entropy: Equation 9)", "p_1^1 - y_1^1",
                {e.dL_dh}, "L^1"),
      make_edge("p1", "L1", chain, "cross-entropy"),
      make_edge("y1", "L1", k),
  };
}

std::vector<std::string> figure1_notes(const HandoutValues& v, const Exercise2& e) {
  const double da_dq = 1 - e.a * e.a;
  return {
      "Equation 10 along the blue path, from L^1 back to V_a1 (each factor is on its edge):",
      "  ∂L^1/∂V_a1 = ∂L^1/∂h_1^1 · ∂h_1^1/∂s_1^1 · ∂s_1^1/∂a_1^1 · ∂a_1^1/∂q_1 · ∂q_1/∂V_a1",
      fmt::format("             = {} · {} · {} · {} · {} = {}", num6(e.dL_dh), num6(e.dh_ds),
                  num6(e.ds_da), num6(da_dq), vec6(v.x), vec6(e.dL_dVa1)),
      fmt::format("  (the handout's rounded hints tanh^2(q_1) ≈ {}, tanh^2(s_1^1) ≈ {} give {})",
                  num6(e.hint_tanh2_q), num6(e.hint_tanh2_s), vec6(e.hint_dL_dVa1)),
      "Blue: the chain rule's path. Gray: given values and constants (no gradient needed). "
      "Orange: ∂L^1/∂(node).",
  };
}

// ---------------------------------------------------------------------------------------------
// The unrolled graph: the consistent example over T steps, full BPTT.

constexpr int64_t kRowVa1 = 2;  // in units of H: V_a is gate block 2 of [V_i; V_f; V_a; V_o]

struct Step {
  std::vector<double> x, y, h, s, gates, p;  // forward; gates [4H] = i, f, a, o
  double q1 = 0, loss = 0;                   // q_1^t = V_a1 x^t + U_a1 h^{t-1} + b_a1
  std::vector<double> dh, ds, dgate, dz;     // backward: totals over all paths; dgate [4H]
};

struct Unrolled {
  CellParams<double> c = example_cell();
  ExampleSequence q;
  std::vector<Step> steps;
  std::vector<double> dV;  // [4H,X], accumulated by cell_backward over the steps
  double loss = 0;
};

double row_dot(const std::vector<double>& m, int64_t row, int64_t n, const std::vector<double>& v) {
  double sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += m[row * n + k] * v[k];
  return sum;
}

void unrolled_forward(Unrolled& u) {
  const int64_t X = u.c.X, H = u.c.H;
  std::vector<double> h = u.q.h0, s = u.q.s0;
  for (size_t t = 0; t < u.q.x.size(); ++t) {
    Step st;
    st.x = u.q.x[t], st.y = u.q.y[t];
    st.h.resize(H), st.s.resize(H), st.gates.resize(4 * H), st.p.resize(H);
    st.q1 = row_dot(u.c.V, kRowVa1 * H, X, st.x) + row_dot(u.c.U, kRowVa1 * H, H, h) +
            u.c.b[kRowVa1 * H];
    cell_forward(st.h.data(), st.s.data(), st.gates.data(), st.x.data(), h.data(), s.data(),
                 u.c.view(), 1);
    st.loss = softmax_xent_forward(st.p.data(), st.h.data(), st.y.data(), nullptr, 1, H);
    u.loss += st.loss;
    h = st.h, s = st.s;
    u.steps.push_back(std::move(st));
  }
}

// The gradients at the gates' outputs, for display (docs/derivation.md, "One step"):
// ds = dh o (1 - tanh^2 s) + ds_next, di = ds a, df = ds s_prev, da = ds i, do = dh tanh s.
void gate_grads(Step& st, const std::vector<double>& s_prev, const std::vector<double>& ds_next) {
  const size_t H = st.h.size();
  st.ds.resize(H), st.dgate.resize(4 * H);
  for (size_t k = 0; k < H; ++k) {
    const double i = st.gates[k], a = st.gates[2 * H + k], o = st.gates[3 * H + k];
    const double ts = std::tanh(st.s[k]);
    st.ds[k] = st.dh[k] * o * (1 - ts * ts) + ds_next[k];
    st.dgate[k] = st.ds[k] * a;
    st.dgate[H + k] = st.ds[k] * s_prev[k];
    st.dgate[2 * H + k] = st.ds[k] * i;
    st.dgate[3 * H + k] = st.dh[k] * ts;
  }
}

void unrolled_backward(Unrolled& u) {
  const int64_t X = u.c.X, H = u.c.H;
  u.dV.assign(4 * H * X, 0.0);
  std::vector<double> dU(4 * H * H, 0.0), db(4 * H, 0.0), dx(X), dh_prev(H), ds_prev(H);
  std::vector<double> dh_next(H, 0.0), ds_next(H, 0.0);
  for (size_t t = u.steps.size(); t-- > 0;) {
    Step& st = u.steps[t];
    const std::vector<double>& h_prev = t ? u.steps[t - 1].h : u.q.h0;
    const std::vector<double>& s_prev = t ? u.steps[t - 1].s : u.q.s0;
    st.dh.resize(H), st.dz.resize(4 * H);
    softmax_xent_backward(st.dh.data(), st.p.data(), st.y.data(), nullptr, 1.0, 1, H);
    for (int64_t k = 0; k < H; ++k) st.dh[k] += dh_next[k];  // from L^t and from step t+1
    gate_grads(st, s_prev, ds_next);
    cell_backward(dx.data(), dh_prev.data(), ds_prev.data(), {u.dV.data(), dU.data(), db.data()},
                  st.dz.data(), st.dh.data(), ds_next.data(), st.gates.data(), st.s.data(),
                  st.x.data(), h_prev.data(), s_prev.data(), u.c.view(), 1);
    dh_next = dh_prev, ds_next = ds_prev;
  }
}

std::vector<double> block(const std::vector<double>& v, int gate, size_t H) {
  return {v.begin() + static_cast<std::ptrdiff_t>(gate * H),
          v.begin() + static_cast<std::ptrdiff_t>((gate + 1) * H)};
}

std::string sid(const char* name, size_t t) {
  return fmt::format("{}_{}", name, t);
}

void add_step_nodes(ComputationGraph& g, const Step& st, size_t t) {
  const size_t H = st.h.size();
  const int step = static_cast<int>(t);
  const NodeKind in = NodeKind::kInput, op = NodeKind::kOperation;
  auto gate = [&](const char* id, const char* name, int k, std::string formula, std::string note) {
    g.nodes.push_back(make_node(sid(id, t), fmt::format("{}^{}", name, t), op,
                                block(st.gates, k, H), std::move(formula), block(st.dgate, k, H),
                                std::move(note), step));
  };
  const std::string T = std::to_string(t), Tp = std::to_string(t - 1);
  g.nodes.push_back(make_node(sid("x", t), "x^" + T, in, st.x, {}, {}, {}, step));
  g.nodes.push_back(make_node(sid("q1", t), "q_1^" + T, op, {st.q1},
                              fmt::format("V_a1 x^{} + U_a1 h^{} + b_a1", T, Tp), {st.dz[2 * H]},
                              {}, step));
  gate("i", "i", 0, fmt::format("σ(V_i x^{0} + U_i h^{1} + b_i)", T, Tp), {});
  gate("f", "f", 1, fmt::format("σ(V_f x^{0} + U_f h^{1} + b_f)", T, Tp), {});
  gate("a", "a", 2, fmt::format("tanh(V_a x^{0} + U_a h^{1} + b_a)", T, Tp),
       fmt::format("unit 1: a_1^{0} = tanh(q_1^{0})", T));
  gate("o", "o", 3, fmt::format("σ(V_o x^{0} + U_o h^{1} + b_o)", T, Tp), {});
  g.nodes.push_back(make_node(sid("s", t), "s^" + T, op, st.s,
                              fmt::format("i^{0} ⊙ a^{0} + f^{0} ⊙ s^{1}", T, Tp), st.ds, {},
                              step));
  g.nodes.push_back(make_node(sid("h", t), "h^" + T, op, st.h,
                              fmt::format("o^{0} ⊙ tanh(s^{0})", T), st.dh, {}, step));
  g.nodes.push_back(
      make_node(sid("p", t), "p^" + T, op, st.p, fmt::format("softmax(h^{})", T), {}, {}, step));
  g.nodes.push_back(make_node(sid("y", t), "y^" + T, in, st.y, {}, {}, "soft target", step));
  g.nodes.push_back(make_node(sid("L", t), "L^" + T, NodeKind::kLoss, {st.loss},
                              fmt::format("-Σ_k y_k^{0} log p_k^{0}", T), {}, {}, step));
}

void add_step_edges(ComputationGraph& g, const Step& st, size_t t) {
  const size_t H = st.h.size();
  const EdgeKind keep = EdgeKind::kGradient, k = EdgeKind::kConstant;
  // At t = 1, h^0 and s^0 are constants and no gate depends on V_a1; from t = 2 on, every path
  // through h^{t-1} or s^{t-1} carries V_a1's influence, and Equation 3 keeps only one of them.
  const EdgeKind miss = t == 1 ? k : EdgeKind::kMissing;
  const std::string hp = sid("h", t - 1), sp = sid("s", t - 1), T = std::to_string(t);
  const std::string Tp = std::to_string(t - 1);
  const double a1 = st.gates[2 * H];
  std::vector<double> p_minus_y(st.p);
  for (size_t j = 0; j < H; ++j) p_minus_y[j] -= st.y[j];
  std::vector<GraphEdge>& e = g.edges;
  e.push_back(make_edge("Va1", sid("q1", t), keep, {}, fmt::format("(x^{})^T", T), st.x));
  e.push_back(make_edge(sid("x", t), sid("q1", t), k));
  for (const char* gate : {"i", "f", "a", "o"})
    e.push_back(make_edge(sid("x", t), sid(gate, t), k));
  e.push_back(make_edge(hp, sid("q1", t), t == 1 ? k : keep,
                        t == 1 ? "U_a1" : fmt::format("U_a1 (Equation 3: h_1^{} only)", Tp)));
  e.push_back(make_edge(hp, sid("i", t), miss, "U_i"));
  e.push_back(make_edge(hp, sid("f", t), miss, "U_f"));
  e.push_back(make_edge(hp, sid("a", t), miss, "U_a, units k ≠ 1"));
  e.push_back(make_edge(hp, sid("o", t), miss, "U_o"));
  e.push_back(make_edge(sid("q1", t), sid("a", t), keep, "tanh", "1 - (a_1^" + T + ")^2",
                        {1 - a1 * a1}, "a_1^" + T));
  e.push_back(make_edge(sp, sid("s", t), miss, t == 1 ? "" : "cell state", "f^" + T,
                        block(st.gates, 1, H)));
  e.push_back(make_edge(sid("a", t), sid("s", t), keep, {}, "i^" + T, block(st.gates, 0, H)));
  e.push_back(make_edge(sid("i", t), sid("s", t), miss));
  e.push_back(make_edge(sid("f", t), sid("s", t), miss));
  std::vector<double> dh_ds(H);
  for (size_t j = 0; j < H; ++j) {
    const double ts = std::tanh(st.s[j]);
    dh_ds[j] = st.gates[3 * H + j] * (1 - ts * ts);
  }
  e.push_back(make_edge(sid("s", t), sid("h", t), keep, {},
                        fmt::format("o^{0} ⊙ (1 - tanh^2(s^{0}))", T), dh_ds));
  e.push_back(make_edge(sid("o", t), sid("h", t), miss));
  e.push_back(make_edge(sid("h", t), sid("p", t), keep, "softmax", fmt::format("p^{0} - y^{0}", T),
                        p_minus_y, "L^" + T));
  e.push_back(make_edge(sid("p", t), sid("L", t), keep, "cross-entropy"));
  e.push_back(make_edge(sid("y", t), sid("L", t), k));
  e.push_back(make_edge(sid("L", t), "L", keep, {}, "1", {}, "L"));
}

// Row 1 of V_a, or of its gradient, from the packed [4H,X] matrix.
std::vector<double> row_Va1(const std::vector<double>& V, int64_t H, int64_t X) {
  return {V.begin() + kRowVa1 * H * X, V.begin() + (kRowVa1 * H + 1) * X};
}

std::vector<std::string> unrolled_notes(const Unrolled& u, const MultiStep& m) {
  const std::vector<double> dVa1 = row_Va1(u.dV, u.c.H, u.c.X);
  return {
      "Nodes are vectors over the H = 2 units; q_1^t is unit 1's pre-activation of a^t, the only "
      "place V_a1 enters. Orange: ∂L/∂(node), full BPTT.",
      "Solid blue: the paths Equation 3 keeps: V_a1 → q_1^t → a^t → s^t → h^t → p^t → L^t, and "
      "h^{t-1} → q_1^t (its term ∂a_1^t/∂h_1^{t-1} · ∂h_1^{t-1}/∂V_a1).",
      "Dashed red: the paths Equation 3 misses for t ≥ 2: the cell state s^{t-1} → s^t (factor "
      "f^t), and h^{t-1} into i^t, f^t, o^t and into the other units of a^t.",
      "Gray: inputs and constants (x^t, y^t, h^0, s^0; at t = 1 no gate depends on V_a1).",
      fmt::format("∂L/∂V_a1: full BPTT (every path) = {};  Equation 3 as written, summed over t "
                  "= {} (off by {:.0f}%).",
                  vec6(dVa1), vec6(m.equation3), 100 * m.equation3_rel_err),
  };
}

}  // namespace

ComputationGraph figure1_graph(const HandoutValues& v) {
  const Exercise2 e = run_exercise2(v, 0.1);
  ComputationGraph g;
  g.title = "Figure 1: the computational graph w.r.t. V_a1 at t = 1, with Exercise 2's values";
  g.loss = "L^1";
  g.steps = 1;
  g.nodes = figure1_nodes(v, e);
  g.edges = figure1_edges(v, e);
  g.notes = figure1_notes(v, e);
  return g;
}

ComputationGraph unrolled_graph(int T) {
  if (T < 1) throw std::invalid_argument(fmt::format("unrolled_graph: T = {} < 1", T));
  Unrolled u;
  u.q = example_sequence(T);
  unrolled_forward(u);
  unrolled_backward(u);
  ComputationGraph g;
  g.title = fmt::format(
      "The graph unrolled over T = {} steps: the consistent example (X = 2, H = 2, "
      "p^t = softmax(h^t)), L = Σ_t L^t",
      T);
  g.loss = "L";
  g.steps = T;
  g.nodes.push_back(make_node("Va1", "V_a1", NodeKind::kParameter, row_Va1(u.c.V, u.c.H, u.c.X), {},
                              row_Va1(u.dV, u.c.H, u.c.X), "row 1 of V_a, used at every step"));
  g.nodes.push_back(make_node("h_0", "h^0", NodeKind::kInput, u.q.h0, {}, {}, "a constant"));
  g.nodes.push_back(make_node("s_0", "s^0", NodeKind::kInput, u.q.s0, {}, {}, "a constant"));
  for (size_t t = 1; t <= u.steps.size(); ++t) add_step_nodes(g, u.steps[t - 1], t);
  g.nodes.push_back(make_node("L", "L", NodeKind::kLoss, {u.loss}, "Σ_t L^t"));
  for (size_t t = 1; t <= u.steps.size(); ++t) add_step_edges(g, u.steps[t - 1], t);
  // Time runs down the page: step t+1 starts below h^t, beside the end of step t. (Steps side by
  // side with aligned rows would need the edges h^t -> step t+1 to run backwards, and dot does
  // not keep clusters in order along a row; left to right, T steps would be far too wide.)
  g.rankdir = "TB";
  g.notes = unrolled_notes(u, run_multistep(T));
  return g;
}

namespace {

// ---------------------------------------------------------------------------------------------
// DOT text. Labels are Graphviz HTML-like labels; tooltips repeat them as plain text (SVG viewers
// show them on hover).

constexpr const char* kBlue = "#1f5fbf";    // the paths the handout's chain rule keeps
constexpr const char* kRed = "#d62728";     // the paths Equation 3 misses
constexpr const char* kOrange = "#b8520a";  // gradients dL/d(node)

std::string html_escape(char c) {
  switch (c) {
    case '&':
      return "&amp;";
    case '<':
      return "&lt;";
    case '>':
      return "&gt;";
    case '"':
      return "&quot;";
    default:
      return std::string(1, c);
  }
}

// Font sizes (points): node text, edge labels, the notes under the title, the title, remarks.
constexpr int kNodePt = 11, kEdgePt = 10, kNotesPt = 12, kTitlePt = 16, kRemarkPt = 9;

// The handout's ASCII notation as HTML in a font of `pt` points: "h_1^{t-1}" ->
// h<SUB>1</SUB><SUP>t-1</SUP>, the scripts smaller (Graphviz does not shrink them). The argument
// of _ or ^ is a {group} or a run of letters and digits.
std::string typeset(std::string_view s, int pt) {
  std::string out;
  for (size_t k = 0; k < s.size(); ++k) {
    const char c = s[k];
    size_t begin = k + 1, end = k + 1, next = k + 1;
    if ((c == '_' || c == '^') && begin < s.size()) {
      if (s[begin] == '{') {
        end = s.find('}', begin);
        end = end == std::string_view::npos ? s.size() : end;
        ++begin, next = end + 1;
      } else {
        while (end < s.size() && std::isalnum(static_cast<unsigned char>(s[end]))) ++end;
        next = end;
      }
    }
    if (end > begin) {
      const char* tag = c == '_' ? "SUB" : "SUP";
      const int small = (pt * 7 + 5) / 10;
      out += fmt::format("<{0}><FONT POINT-SIZE=\"{1}\">{2}</FONT></{0}>", tag, small,
                         typeset(s.substr(begin, end - begin), small));
      k = next - 1;
    } else {
      out += html_escape(c);
    }
  }
  return out;
}

// Lines of an HTML label as a borderless table: unlike <BR/>, table rows leave room for
// subscripts and superscripts. `align`: "CENTER" or "LEFT".
std::string html_lines(const std::vector<std::string>& lines, std::string_view align = "CENTER") {
  std::string out = R"(<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">)";
  for (const std::string& line : lines)
    out += fmt::format(R"(<TR><TD ALIGN="{}">{}</TD></TR>)", align, line);
  return out + "</TABLE>>";
}

// A line of the notes: leading spaces kept (HTML labels drop them).
std::string indented(std::string_view s, int pt) {
  std::string out;
  size_t k = 0;
  for (; k < s.size() && s[k] == ' '; ++k) out += "&#160;";
  return out + typeset(s.substr(k), pt);
}

std::string dot_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) out += (c == '"' || c == '\\') ? std::string{'\\', c} : std::string(1, c);
  return out + "\"";
}

std::string node_label(const GraphNode& n, std::string_view loss) {
  std::vector<std::string> lines{"<B>" + typeset(n.name, kNodePt) + "</B>"};
  if (!n.formula.empty()) lines.back() += " = " + typeset(n.formula, kNodePt);
  if (!n.value.empty()) {
    if (n.formula.empty())
      lines.back() += " = " + vec6(n.value);
    else
      lines.push_back("= " + vec6(n.value));
  }
  if (!n.grad.empty())
    lines.push_back(fmt::format(R"(<FONT COLOR="{}">∂{}/∂{} = {}</FONT>)", kOrange,
                                typeset(loss, kNodePt), typeset(n.name, kNodePt), vec6(n.grad)));
  for (size_t begin = 0; begin < n.note.size();) {  // one line per '\n'
    const size_t end = std::min(n.note.find('\n', begin), n.note.size());
    lines.push_back(fmt::format(R"(<FONT POINT-SIZE="{}" COLOR="gray35"><I>{}</I></FONT>)",
                                kRemarkPt, typeset(n.note.substr(begin, end - begin), kRemarkPt)));
    begin = end + 1;
  }
  return html_lines(lines);
}

std::string node_tooltip(const GraphNode& n, std::string_view loss) {
  std::string s = n.name;
  if (!n.value.empty()) s += " = " + vec6(n.value);
  if (!n.grad.empty()) s += fmt::format("; d{}/d{} = {}", loss, n.name, vec6(n.grad));
  if (!n.formula.empty()) s += fmt::format("; {} = {}", n.name, n.formula);
  return dot_string(s);
}

std::string node_style(const GraphNode& n) {
  switch (n.kind) {
    case NodeKind::kInput:
      return R"(fillcolor="#f2f2f2", color="gray50")";
    case NodeKind::kParameter:
      return n.id == "Va1" ? R"(fillcolor="#fff2a8", color="#8a6d00", penwidth=2.5)"
                           : R"(fillcolor="#fff8d6", color="#8a6d00")";
    case NodeKind::kLoss:
      return R"(fillcolor="#fde2dd", color="#9b2c2c")";
    case NodeKind::kOperation:
      break;
  }
  return R"(fillcolor="white", color="black")";
}

std::string edge_style(EdgeKind k) {
  switch (k) {
    case EdgeKind::kGradient:
      return fmt::format(R"(color="{0}", fontcolor="{0}", penwidth=2.4)", kBlue);
    case EdgeKind::kMissing:
      return fmt::format(R"(color="{0}", fontcolor="{0}", penwidth=2, style=dashed)", kRed);
    case EdgeKind::kConstant:
      break;
  }
  return R"(color="gray60", fontcolor="gray40", penwidth=1)";
}

std::string edge_attrs(const ComputationGraph& g, const GraphEdge& e) {
  std::vector<std::string> lines;
  std::string tip;
  if (!e.label.empty()) lines.push_back(typeset(e.label, kEdgePt)), tip = e.label;
  if (!e.factor.empty()) {
    const std::string of = e.of.empty() ? g.node(e.to).name : e.of;
    const std::string& from = g.node(e.from).name;
    lines.push_back(fmt::format("∂{}/∂{} = {}", typeset(of, kEdgePt), typeset(from, kEdgePt),
                                typeset(e.factor, kEdgePt)));
    tip += fmt::format("{}d{}/d{} = {}", tip.empty() ? "" : "; ", of, from, e.factor);
    if (!e.local.empty()) lines.push_back("= " + vec6(e.local)), tip += " = " + vec6(e.local);
  }
  std::string out = edge_style(e.kind);
  if (!lines.empty())
    out += fmt::format(", label={}, tooltip={}", html_lines(lines), dot_string(tip));
  return out;
}

// Nodes joined by the chain rule's solid path share a group, which dot draws as straight as it
// can: the chain reads left to right, the inputs hang above and below it. Only for a graph without
// clusters (Figure 1): Graphviz 2.43 can fail on groups inside clusters ("trouble in init_rank").
bool has_clusters(const ComputationGraph& g) {
  return std::any_of(g.nodes.begin(), g.nodes.end(), [](const GraphNode& n) { return n.step > 0; });
}

bool on_chain(const ComputationGraph& g, const GraphNode& n) {
  for (const GraphEdge& e : g.edges)
    if (e.kind == EdgeKind::kGradient && (e.from == n.id || e.to == n.id)) return true;
  return false;
}

void emit_node(std::string& out, const ComputationGraph& g, const GraphNode& n,
               std::string_view indent) {
  const bool group = !has_clusters(g) && on_chain(g, n);
  out += fmt::format("{}{} [label={}, tooltip={}, {}{}];\n", indent, n.id, node_label(n, g.loss),
                     node_tooltip(n, g.loss), node_style(n), group ? ", group=chain" : "");
}

std::string graph_label(const ComputationGraph& g) {
  std::vector<std::string> lines{fmt::format(R"(<FONT POINT-SIZE="{}"><B>{}</B></FONT>)", kTitlePt,
                                             typeset(g.title, kTitlePt))};
  for (const std::string& note : g.notes) lines.push_back(indented(note, kNotesPt));
  return html_lines(lines, "LEFT");
}

}  // namespace

std::string to_dot(const ComputationGraph& g) {
  std::string out = "digraph lstmgrad {\n";
  out += "  // " + g.title + "\n";
  out += fmt::format(
      "  graph [rankdir={}, nodesep=0.25, ranksep=0.45, fontname=\"Helvetica\", "
      "fontsize={}, labelloc=t, labeljust=l, label={}];\n",
      g.rankdir, kNotesPt, graph_label(g));
  out += fmt::format(
      "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize={}];\n",
      kNodePt);
  out += fmt::format("  edge [fontname=\"Helvetica\", fontsize={}, arrowsize=0.7];\n", kEdgePt);
  for (const GraphNode& n : g.nodes)
    if (n.step == 0) emit_node(out, g, n, "  ");
  for (int t = 1; t <= g.steps; ++t) {
    bool any = false;
    for (const GraphNode& n : g.nodes) any = any || n.step == t;
    if (!any) continue;
    out += fmt::format(
        "  subgraph cluster_t{0} {{\n    label=<<B>t = {0}</B>>; style=\"rounded\"; "
        "color=\"gray70\"; fontsize=14;\n",
        t);
    for (const GraphNode& n : g.nodes)
      if (n.step == t) emit_node(out, g, n, "    ");
    out += "  }\n";
  }
  for (const GraphEdge& e : g.edges)
    out += fmt::format("  {} -> {} [{}];\n", e.from, e.to, edge_attrs(g, e));
  return out + "}\n";
}

}  // namespace lstmgrad
