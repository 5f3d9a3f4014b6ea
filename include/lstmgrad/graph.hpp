// lstmgrad: the handout's computational graph (its Figure 1, missing from the text) as data, with
// forward values and gradients on it, and as Graphviz DOT text (`lstmgrad graph`).
//
// Two graphs:
// - figure1_graph: the scalar graph w.r.t. V_a1 at t = 1 for Exercise 2's numbers. The edges on
//   the path V_a1 -> q_1 -> a_1^1 -> s_1^1 -> h_1^1 -> p^1 -> L^1 carry the factors of
//   Equation 10 (docs/derivation.md, "Exercise 1" and "Exercise 2").
// - unrolled_graph: the consistent example (example_cell, example_sequence) over T steps, vector
//   nodes per step, gradients from full BPTT with L = sum_t L^t; the paths Equation 3 keeps are
//   told apart from those it misses (docs/derivation.md, "Equation 3 at t = 2").
//
// Names and formulas are written in the handout's ASCII notation ("h_1^1", "s^{t-1}", "V_a1");
// to_dot typesets _ and ^ as subscripts and superscripts. No I/O here.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "lstmgrad/exercise.hpp"

namespace lstmgrad {

enum class NodeKind {
  kInput,      // a given value or a constant input: x, y, h^0, s^0, and Exercise 2's i, f, o, p
  kParameter,  // a weight: V_a1 (the one differentiated for), U_a1, b_1
  kOperation,  // computed from its in-edges
  kLoss,       // L^t, and L = sum_t L^t
};

enum class EdgeKind {
  kGradient,  // on a path from V_a1 to L that Equation 4 (t = 1) or Equation 3 (t >= 2) keeps
  kMissing,   // on a path from V_a1 to L that Equation 3 leaves out (only for t >= 2)
  kConstant,  // carries no dependence on V_a1: an input, a constant, a gate at t = 1
};

struct GraphNode {
  std::string id;             // DOT identifier: letters, digits and '_'
  std::string name;           // handout notation: "a_1^1", "V_a1", "s^2"
  std::string formula;        // how it is computed ("tanh(q_1)"); empty for inputs
  std::vector<double> value;  // forward value, one entry per unit; empty: none shown
  std::vector<double> grad;   // dL/d(node), the same shape; empty: none shown
  std::string note;           // a remark in words, '\n' between lines; may be empty
  NodeKind kind = NodeKind::kOperation;
  int step = 0;  // the time step whose cluster holds the node; 0: outside every cluster
};

struct GraphEdge {
  std::string from, to;       // node ids
  std::string label;          // what the edge does ("softmax", "U_i"); may be empty
  std::string of;             // numerator of the local derivative; empty: the `to` node's name
  std::string factor;         // the local derivative d(of)/d(from) as a formula; empty: none
  std::vector<double> local;  // its value; empty: none shown
  EdgeKind kind = EdgeKind::kConstant;
};

struct ComputationGraph {
  std::string title;
  std::string loss = "L";          // the loss whose gradients the nodes show ("L^1" or "L")
  std::vector<std::string> notes;  // lines under the title (the chain rule in numbers, legend)
  std::vector<GraphNode> nodes;
  std::vector<GraphEdge> edges;
  std::string rankdir = "LR";  // Graphviz's direction: LR (left to right) or TB (top to bottom)
  int steps = 1;
  // The node with this id; throws std::out_of_range if there is none.
  const GraphNode& node(std::string_view id) const;
};

// The handout's Figure 1 for Exercise 2's values (run_exercise2).
ComputationGraph figure1_graph(const HandoutValues& v);

// The consistent example unrolled over T >= 1 steps. Node ids: "x_t", "q1_t", "i_t", "f_t",
// "a_t", "o_t", "s_t", "h_t", "p_t", "y_t", "L_t" for t = 1..T, and "h_0", "s_0", "Va1", "L".
// Throws std::invalid_argument for T < 1.
ComputationGraph unrolled_graph(int T);

// Graphviz DOT text of the graph: `digraph`, one cluster per time step, values and gradients with
// 6 significant digits in each node's label and (as plain text) its tooltip.
std::string to_dot(const ComputationGraph& g);

}  // namespace lstmgrad
