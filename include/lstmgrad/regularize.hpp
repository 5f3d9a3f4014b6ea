// lstmgrad: AWD-LSTM's regularisers (Merity et al. 2017) for the language model: weight drop on
// the recurrent matrices, locked (variational) dropout, embedding dropout, and activation
// regularisation (AR) and temporal AR (TAR) of the top layer's output. docs/design.md,
// "Regularisation"; the backward passes in docs/derivation.md.
#pragma once
#include <cstdint>
#include <vector>

#include "lstmgrad/model.hpp"

namespace lstmgrad {

// Rates; 0 turns a regulariser off. Every dropout rate is in [0, 1).
struct Regularization {
  double dropout_in = 0;   // locked mask [B,X] on layer 0's input (the embedding's output)
  double dropout_hid = 0;  // locked mask [B,H] on layer k's output before layer k+1 reads it
  double dropout_out = 0;  // locked mask [B,H] on the top layer's output before the readout
  // Gal and Ghahramani's recurrent dropout: locked mask [B,H] per layer on h_{t-1} where the
  // recurrent product reads it (z_t = ... + (h_{t-1} * m) U^T); the layer's output is undropped.
  double dropout_rec = 0;
  double dropout_emb = 0;  // mask over the V rows of encoder.weight, for the lookup only
  double weight_drop = 0;  // DropConnect mask [4H,H] on each layer's weight_hh
  double ar = 0;           // + ar * mean of (top output after dropout_out)^2 over its T*B*H entries
  double tar = 0;  // + tar * mean of (h_top[t+1] - h_top[t])^2 before dropout, (T-1)*B*H entries

  bool any_dropout() const {
    return dropout_in > 0 || dropout_hid > 0 || dropout_out > 0 || dropout_rec > 0 ||
           dropout_emb > 0 || weight_drop > 0;
  }
  bool any() const { return any_dropout() || ar > 0 || tar > 0; }
};

// The command-line flag of the first regulariser `r` turns on (in --help order), or nullptr: what
// a message names when an engine lacks it.
const char* regularization_flag(const Regularization& r);

// Checks each rate (dropouts in [0, 1), ar and tar >= 0 and finite) and that the model has what
// a rate needs (--dropout-emb: embedding input); throws InputError naming the flag.
void validate_regularization(const Regularization& r, const ModelConfig& cfg);

// The masks of one forward, each entry 0 or 1/(1-p); an empty vector: no dropout at that site.
// Locked masks are [B, width], the same at every step t.
template <class Real>
struct Masks {
  int64_t B = 0;                          // the batch rows the locked masks are for
  std::vector<Real> emb;                  // [V] rows of encoder.weight (lookup only)
  std::vector<Real> in;                   // [B,X] layer 0's input
  std::vector<std::vector<Real>> hid;     // [L-1] of [B,H]: layer k's output into layer k+1
  std::vector<Real> out;                  // [B,H] the top layer's output into the readout
  std::vector<std::vector<Real>> rec;     // [L] of [B,H]: h_{t-1} into layer k's recurrent product
  std::vector<std::vector<Real>> weight;  // [L] of [4H,H]: each layer's weight_hh
  // Zoneout (ModelConfig::zoneout_h, zoneout_s): [L] of [T,B,H] of 0 and 1 (1: the unit keeps its
  // previous h or s at that step); empty: the expectation (the rate in place of the mask).
  // (Each H is layer k's width ModelConfig::width(k), or out_width(k) where the mask is on h:
  // hid, rec, zone_h, and weight_hh's columns.)

  std::vector<std::vector<Real>> zone_h, zone_s;
};

// Draws the masks of `r` for a batch of B rows as a pure function of (seed, site, index) (the
// same counter-based generator as the non-recurrent dropout, src/cpu/dropout.hpp, at sites of
// their own): the engine draws exactly these for set_regularization(r, seed). The batch is
// streams [first, first + B) of `total` (total = 0: it is whole): a locked mask's row b is the
// whole batch's row first + b, so masks do not depend on how a batch is split among processes;
// the embedding and weight masks are the same for every shard. Reuses m's storage.
template <class Real>
void draw_masks(Masks<Real>& m, const ModelConfig& cfg, const Regularization& r, int64_t B,
                uint64_t seed, int64_t first = 0, int64_t total = 0);

// Zoneout's masks zone_h, zone_s for a training forward of T steps at the rates of cfg (cleared
// where a rate is 0), drawn as draw_masks draws (sites of their own; row b of step t is the whole
// batch's row first + b): what the engine draws in a forward after set_regularization(r, seed).
template <class Real>
void draw_zoneout(Masks<Real>& m, const ModelConfig& cfg, int64_t T, int64_t B, uint64_t seed,
                  int64_t first = 0, int64_t total = 0);

}  // namespace lstmgrad
