#include "lstmgrad/regularize.hpp"

#include <fmt/format.h>

#include <cmath>
#include <tuple>

#include "cpu/dropout.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad {

namespace {

// Mask sites, apart from the non-recurrent dropout's 0 .. L (L <= 2^16): a tag in the high bits,
// the layer in the low ones.
constexpr uint64_t kSiteEmb = uint64_t{1} << 40;
constexpr uint64_t kSiteIn = (uint64_t{1} << 40) + 1;
constexpr uint64_t kSiteOut = (uint64_t{1} << 40) + 2;
constexpr uint64_t kSiteHid = uint64_t{2} << 40;     // + k, the boundary above layer k
constexpr uint64_t kSiteWeight = uint64_t{3} << 40;  // + k, layer k's weight_hh
constexpr uint64_t kSiteRec = uint64_t{4} << 40;     // + k, layer k's h_{t-1}
constexpr uint64_t kSiteZoneH = uint64_t{5} << 40;   // + k, layer k's zoneout on h
constexpr uint64_t kSiteZoneS = uint64_t{6} << 40;   // + k, layer k's zoneout on s

template <class Real>
void fill(std::vector<Real>& v, int64_t n, double p, uint64_t seed, uint64_t site) {
  v.resize(static_cast<size_t>(n));
  cpu::dropout_mask(v.data(), n, p, seed, site);
}

// A locked mask [B,W]: row b is the whole batch's row first + b (dropout_mask's [T,B,W] form at
// T = 1 draws entry (first + b) * W + j).
template <class Real>
void fill_locked(std::vector<Real>& v, int64_t B, int64_t W, int64_t first, int64_t total, double p,
                 uint64_t seed, uint64_t site) {
  v.resize(static_cast<size_t>(B * W));
  cpu::dropout_mask(v.data(), 1, B, W, cpu::StreamShard{first, total}, p, seed, site);
}

}  // namespace

const char* regularization_flag(const Regularization& r) {
  return r.dropout_in > 0    ? "--dropout-in"
         : r.dropout_hid > 0 ? "--dropout-hid"
         : r.dropout_out > 0 ? "--dropout-out"
         : r.dropout_rec > 0 ? "--dropout-rec"
         : r.dropout_emb > 0 ? "--dropout-emb"
         : r.weight_drop > 0 ? "--weight-drop"
         : r.ar > 0          ? "--ar"
         : r.tar > 0         ? "--tar"
                             : nullptr;
}

void validate_regularization(const Regularization& r, const ModelConfig& cfg) {
  for (const auto& [flag, p] :
       {std::pair{"--dropout-in", r.dropout_in}, std::pair{"--dropout-hid", r.dropout_hid},
        std::pair{"--dropout-out", r.dropout_out}, std::pair{"--dropout-rec", r.dropout_rec},
        std::pair{"--dropout-emb", r.dropout_emb}, std::pair{"--weight-drop", r.weight_drop}})
    if (!(p >= 0 && p < 1)) throw InputError(fmt::format("{}: must be in [0, 1), got {}", flag, p));
  for (const auto& [flag, a] : {std::pair{"--ar", r.ar}, std::pair{"--tar", r.tar}})
    if (!(a >= 0 && std::isfinite(a)))
      throw InputError(fmt::format("{}: must be finite and >= 0, got {}", flag, a));
  if (r.dropout_emb > 0 && cfg.input != InputKind::embedding)
    throw InputError("--dropout-emb: needs the embedding input (--input embedding)");
}

template <class Real>
void draw_masks(Masks<Real>& m, const ModelConfig& cfg, const Regularization& r, int64_t B,
                uint64_t seed, int64_t first, int64_t total) {
  const int64_t H = cfg.H, L = cfg.L;
  m.B = B;
  if (r.dropout_emb > 0 && cfg.input == InputKind::embedding)
    fill(m.emb, cfg.V, r.dropout_emb, seed, kSiteEmb);
  else
    m.emb.clear();
  if (r.dropout_in > 0)
    fill_locked(m.in, B, cfg.X, first, total, r.dropout_in, seed, kSiteIn);
  else
    m.in.clear();
  m.hid.resize(r.dropout_hid > 0 ? static_cast<size_t>(L - 1) : 0);
  for (int64_t k = 0; k + 1 < L && r.dropout_hid > 0; ++k)
    fill_locked(m.hid[static_cast<size_t>(k)], B, cfg.out_width(k), first, total, r.dropout_hid,
                seed, kSiteHid + static_cast<uint64_t>(k));
  if (r.dropout_out > 0)
    fill_locked(m.out, B, H, first, total, r.dropout_out, seed, kSiteOut);
  else
    m.out.clear();
  m.rec.resize(r.dropout_rec > 0 ? static_cast<size_t>(L) : 0);
  for (int64_t k = 0; k < L && r.dropout_rec > 0; ++k)
    fill_locked(m.rec[static_cast<size_t>(k)], B, cfg.out_width(k), first, total, r.dropout_rec,
                seed, kSiteRec + static_cast<uint64_t>(k));
  m.weight.resize(r.weight_drop > 0 ? static_cast<size_t>(L) : 0);
  for (int64_t k = 0; k < L && r.weight_drop > 0; ++k)
    fill(m.weight[static_cast<size_t>(k)], 4 * cfg.width(k) * cfg.out_width(k), r.weight_drop, seed,
         kSiteWeight + static_cast<uint64_t>(k));
}

template <class Real>
void draw_zoneout(Masks<Real>& m, const ModelConfig& cfg, int64_t T, int64_t B, uint64_t seed,
                  int64_t first, int64_t total) {
  const int64_t L = cfg.L;
  for (auto [masks, p, site] : {std::tuple{&m.zone_h, cfg.zoneout_h, kSiteZoneH},
                                std::tuple{&m.zone_s, cfg.zoneout_s, kSiteZoneS}}) {
    masks->resize(p > 0 ? static_cast<size_t>(L) : 0);
    for (int64_t k = 0; k < L && p > 0; ++k) {
      std::vector<Real>& v = (*masks)[static_cast<size_t>(k)];
      const int64_t H = masks == &m.zone_h ? cfg.out_width(k) : cfg.width(k);  // on h or on s
      v.resize(static_cast<size_t>(T * B * H));
      cpu::dropout_mask(v.data(), T, B, H, cpu::StreamShard{first, total}, p, seed,
                        site + static_cast<uint64_t>(k));
      for (Real& e : v) e = e == Real(0) ? Real(1) : Real(0);  // dropped (rate p): kept as it was
    }
  }
}

template void draw_zoneout(Masks<float>&, const ModelConfig&, int64_t, int64_t, uint64_t, int64_t,
                           int64_t);
template void draw_zoneout(Masks<double>&, const ModelConfig&, int64_t, int64_t, uint64_t, int64_t,
                           int64_t);
template void draw_masks(Masks<float>&, const ModelConfig&, const Regularization&, int64_t,
                         uint64_t, int64_t, int64_t);
template void draw_masks(Masks<double>&, const ModelConfig&, const Regularization&, int64_t,
                         uint64_t, int64_t, int64_t);

}  // namespace lstmgrad
