// `lstmgrad graph`: the handout's Figure 1 and the unrolled graph, as data, as DOT text, and
// through the command (DOT, SVG via Graphviz, and what happens without Graphviz).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "lstmgrad/exercise.hpp"
#include "lstmgrad/graph.hpp"

namespace lstmgrad::test {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Structure of the DOT text: braces balance outside quoted strings and HTML labels, HTML labels'
// angle brackets balance (edges' "->" aside), and every string is closed.
void expect_well_formed(const std::string& dot) {
  ASSERT_EQ(dot.rfind("digraph ", 0), 0u) << dot.substr(0, 40);
  int braces = 0, html = 0;
  bool in_string = false;
  for (size_t k = 0; k < dot.size(); ++k) {
    const char c = dot[k];
    if (in_string) {
      if (c == '\\')
        ++k;
      else if (c == '"')
        in_string = false;
    } else if (html > 0) {
      html += c == '<' ? 1 : c == '>' ? -1 : 0;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '-' && k + 1 < dot.size() && dot[k + 1] == '>') {
      ++k;
    } else if (c == '<') {
      html = 1;
    } else if (c == '{' || c == '}') {
      braces += c == '{' ? 1 : -1;
      ASSERT_GE(braces, 0) << "unbalanced '}' at offset " << k;
    }
  }
  EXPECT_FALSE(in_string);
  EXPECT_EQ(html, 0);
  EXPECT_EQ(braces, 0);
  EXPECT_EQ(dot.substr(dot.size() - 2), "}\n");
}

void expect_rel(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::abs(got - want), rel * std::abs(want))
      << what << ": got " << got << ", want " << want << ", rel. diff "
      << std::abs(got - want) / std::abs(want);
}

const GraphEdge* find_edge(const ComputationGraph& g, const std::string& from,
                           const std::string& to) {
  for (const GraphEdge& e : g.edges)
    if (e.from == from && e.to == to) return &e;
  return nullptr;
}

// The command-line tests need the lstmgrad binary (LSTMGRAD_BUILD_CLI).
#define SKIP_WITHOUT_CLI() \
  if (std::string(LSTMGRAD_CLI_PATH).empty()) GTEST_SKIP() << "lstmgrad command not built"

bool have_dot() {
  return std::system("command -v dot >/dev/null 2>&1") == 0;
}

TEST(Graph, Figure1DotIsWellFormed) {
  expect_well_formed(to_dot(figure1_graph(HandoutValues{})));
  expect_well_formed(to_dot(unrolled_graph(3)));
}

TEST(Graph, Figure1HasEveryNodeWithExercise2sValues) {
  const ComputationGraph g = figure1_graph(HandoutValues{});
  for (const char* id : {"x1", "h0", "Va1", "Ua1", "b1", "s0", "i1", "f1", "o1", "p1", "y1", "q1",
                         "a1", "s1", "h1", "L1"})
    EXPECT_NO_THROW(g.node(id)) << id;
  EXPECT_EQ(g.node("q1").value, std::vector<double>{5.0});
  expect_rel(g.node("a1").value[0], std::tanh(5.0), 1e-15, "a_1^1");
  expect_rel(g.node("h1").value[0], 0.9640211647, 1e-10, "h_1^1");
  EXPECT_EQ(g.node("h1").grad, std::vector<double>{0.5});
  const Exercise2 e = run_exercise2(HandoutValues{}, 0.1);
  EXPECT_EQ(g.node("Va1").grad, e.dL_dVa1);
  for (double d : g.node("Va1").grad) expect_rel(d, 6.415625535e-6, 1e-9, "dL/dV_a1");
  // The text a reader sees (tooltips repeat the labels in plain text).
  const std::string dot = to_dot(g);
  for (const char* part :
       {"q_1 = 5;", "a_1^1 = 0.999909;", "s_1^1 = 1.99991;", "h_1^1 = 0.964021;",
        "dL^1/dh_1^1 = 0.5", "dL^1/dq_1 = 6.41563e-06", "dL^1/dV_a1 = (6.41563e-06, 6.41563e-06)",
        "x^1 = (1, 1)", "b_1 = 1", "dh_1^1/ds_1^1 = o_1^1 (1 - tanh^2(s_1^1)) = 0.0706632"})
    EXPECT_TRUE(contains(dot, part)) << "missing: " << part;
}

TEST(Graph, Figure1EdgesCarryTheFactorsOfEquation10) {
  const ComputationGraph g = figure1_graph(HandoutValues{});
  // The product of the local derivatives along the chain is the gradient at V_a1.
  double chain = 1;
  const char* path[] = {"Va1", "q1", "a1", "s1", "h1", "p1"};
  for (size_t k = 0; k + 1 < std::size(path); ++k) {
    const GraphEdge* e = find_edge(g, path[k], path[k + 1]);
    ASSERT_NE(e, nullptr) << path[k] << " -> " << path[k + 1];
    EXPECT_EQ(e->kind, EdgeKind::kGradient);
    ASSERT_FALSE(e->local.empty());
    if (k > 0) chain *= e->local[0];  // the first edge's factor is x^1, a vector
  }
  const std::vector<double>& x = find_edge(g, "Va1", "q1")->local;
  for (size_t j = 0; j < x.size(); ++j)
    expect_rel(chain * x[j], g.node("Va1").grad[j], 1e-14, "product of the edge factors");
  EXPECT_EQ(find_edge(g, "x1", "q1")->kind, EdgeKind::kConstant);
}

TEST(Graph, UnrolledHasEveryStepAndTheMissingPathsDashed) {
  const ComputationGraph g = unrolled_graph(3);
  for (int t = 1; t <= 3; ++t)
    for (const char* n : {"x", "q1", "i", "f", "a", "o", "s", "h", "p", "L"})
      EXPECT_EQ(g.node(std::string(n) + "_" + std::to_string(t)).step, t) << n << t;
  // The cell-state path is missing in Equation 3 from t = 2 on; at t = 1, s^0 is a constant.
  ASSERT_NE(find_edge(g, "s_1", "s_2"), nullptr);
  EXPECT_EQ(find_edge(g, "s_1", "s_2")->kind, EdgeKind::kMissing);
  EXPECT_EQ(find_edge(g, "s_0", "s_1")->kind, EdgeKind::kConstant);
  EXPECT_EQ(find_edge(g, "h_1", "q1_2")->kind, EdgeKind::kGradient);
  for (const char* gate : {"i_2", "f_2", "o_2", "a_2"})
    EXPECT_EQ(find_edge(g, "h_1", gate)->kind, EdgeKind::kMissing) << gate;
  for (int t = 1; t <= 3; ++t)
    EXPECT_NE(find_edge(g, "Va1", "q1_" + std::to_string(t)), nullptr) << t;
  const std::string dot = to_dot(g);
  EXPECT_TRUE(contains(dot, "subgraph cluster_t3"));
  EXPECT_TRUE(contains(dot,
                       "s_1 -> s_2 [color=\"#d62728\", fontcolor=\"#d62728\", penwidth=2, "
                       "style=dashed"));
  EXPECT_TRUE(contains(dot, "Equation 3 misses"));
  EXPECT_TRUE(contains(dot, "rankdir=TB"));  // time runs down the page
}

TEST(Graph, UnrolledGradientsAreFullBptt) {
  for (int T : {2, 3}) {
    const ComputationGraph g = unrolled_graph(T);
    const MultiStep m = run_multistep(T);
    const std::vector<double>& dVa1 = g.node("Va1").grad;
    ASSERT_EQ(dVa1.size(), m.bptt.size());
    for (size_t j = 0; j < dVa1.size(); ++j) {
      expect_rel(dVa1[j], m.bptt[j], 1e-13, "dL/dV_a1 vs run_multistep");
      expect_rel(dVa1[j], m.autodiff[j], 1e-12, "dL/dV_a1 vs autodiff");
      // V_a1 enters only q_1^t: dL/dV_a1 = sum_t dL/dq_1^t (x^t)^T.
      double sum = 0;
      for (int t = 1; t <= T; ++t)
        sum +=
            g.node("q1_" + std::to_string(t)).grad[0] * g.node("x_" + std::to_string(t)).value[j];
      expect_rel(sum, dVa1[j], 1e-13, "sum over t of dL/dq_1^t x^t");
    }
    // At the last step h^T is used only by L^T: dL/dh^T = p^T - y^T.
    const std::string last = std::to_string(T);
    const GraphNode& p = g.node("p_" + last);
    const std::vector<double> y = example_sequence(T).y.back();
    for (size_t k = 0; k < y.size(); ++k)
      expect_rel(g.node("h_" + last).grad[k], p.value[k] - y[k], 1e-14, "dL/dh^T");
  }
}

TEST(Graph, CliWritesDotToStdoutOrAFile) {
  SKIP_WITHOUT_CLI();
  const CliResult r = run_cli("graph");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, to_dot(figure1_graph(HandoutValues{})));
  TempDir dir;
  const CliResult f = run_cli("graph --steps 3 -o " + (dir / "g.dot").string());
  ASSERT_EQ(f.rc, 0) << f.err;
  EXPECT_EQ(f.out, "");
  EXPECT_EQ(slurp(dir / "g.dot"), to_dot(unrolled_graph(3)));
}

TEST(Graph, CliTakesOtherValuesAndRejectsBadInput) {
  SKIP_WITHOUT_CLI();
  TempDir dir;
  std::ofstream(dir / "v.json") << R"({"p1": 0.3, "y1": 0.9, "o1": 0.7, "i1": 0.4, "s0": -0.2,
    "b1": 0.1, "Va1": [0.2, -0.5], "x": [1.5, -0.4], "Ua1": [0.1], "h0": [-0.3]})";
  const CliResult r = run_cli("graph --values " + (dir / "v.json").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "q_1 = 0.57;")) << r.out.substr(0, 2000);  // 0.3+0.2-0.03+0.1
  const CliResult both = run_cli("graph --steps 2 --values " + (dir / "v.json").string());
  EXPECT_EQ(both.rc, 2);
  EXPECT_EQ(count_lines(both.err), 1u) << both.err;
  EXPECT_EQ(run_cli("graph --format png").rc, 2);
  EXPECT_EQ(run_cli("graph --steps 0").rc, 2);
  const CliResult bad = run_cli("graph -o " + (dir / "no" / "such" / "g.dot").string());
  EXPECT_EQ(bad.rc, 2);
}

TEST(Graph, CliWritesSvgWithGraphviz) {
  SKIP_WITHOUT_CLI();
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed";
  TempDir dir;
  const CliResult r = run_cli("graph --format svg -o " + (dir / "f.svg").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string svg = slurp(dir / "f.svg");
  EXPECT_TRUE(svg.rfind("<?xml", 0) == 0 || svg.rfind("<svg", 0) == 0) << svg.substr(0, 80);
  EXPECT_TRUE(contains(svg, "</svg>"));
  // dot itself parses both graphs without a word on stderr.
  for (int T : {1, 3}) {
    const std::filesystem::path in = dir / "g.dot", err = dir / "err.txt";
    std::ofstream(in) << (T == 1 ? to_dot(figure1_graph(HandoutValues{}))
                                 : to_dot(unrolled_graph(T)));
    const std::string cmd = "dot -Tsvg -o /dev/null '" + in.string() + "' 2>'" + err.string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << "T = " << T;
    EXPECT_EQ(slurp(err), "") << "T = " << T;
  }
}

TEST(Graph, CliWithoutGraphvizFailsOnOneLineAndWritesNothing) {
  SKIP_WITHOUT_CLI();
  TempDir dir, empty;
  const std::filesystem::path out = dir / "f.svg";
  const std::string cmd = "PATH='" + empty.path().string() + "' " + LSTMGRAD_CLI_PATH +
                          " graph --format svg -o '" + out.string() + "' >'" +
                          (dir / "out").string() + "' 2>'" + (dir / "err").string() + "'";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  const std::string err = slurp(dir / "err");
  EXPECT_EQ(count_lines(err), 1u) << err;
  EXPECT_TRUE(contains(err,
                       "graph: --format svg needs Graphviz's 'dot' (Debian: apt-get install "
                       "graphviz); use --format dot"))
      << err;
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator{}),
            2);  // out and err: no output file, no temporary file
  // DOT needs no Graphviz.
  const std::string dot_cmd = "PATH='" + empty.path().string() + "' " + LSTMGRAD_CLI_PATH +
                              " graph -o '" + (dir / "g.dot").string() + "' 2>/dev/null";
  EXPECT_EQ(std::system(dot_cmd.c_str()), 0);
  EXPECT_TRUE(std::filesystem::exists(dir / "g.dot"));
}

}  // namespace
}  // namespace lstmgrad::test
