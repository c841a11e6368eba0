// Per-splat preprocessing of the CPU rasterizer and its gradient (see splat_math.h).
#include "splat_math.h"

#include <algorithm>

namespace dgr_cpu {

namespace {

void quat_to_rot(const float* q, float* r) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  r[0] = 1.f - 2.f * (y * y + z * z);
  r[1] = 2.f * (x * y - w * z);
  r[2] = 2.f * (x * z + w * y);
  r[3] = 2.f * (x * y + w * z);
  r[4] = 1.f - 2.f * (x * x + z * z);
  r[5] = 2.f * (y * z - w * x);
  r[6] = 2.f * (x * z - w * y);
  r[7] = 2.f * (y * z + w * x);
  r[8] = 1.f - 2.f * (x * x + y * y);
}

// dL/dq (unnormalised w, x, y, z) from dL/dR for R of the normalised quaternion qn.
void quat_to_rot_backward(const float* qn_f, float qnorm_f, const double* g, float* dq) {
  const double qn[4] = {qn_f[0], qn_f[1], qn_f[2], qn_f[3]};
  const double qnorm = qnorm_f;
  const double w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  double dn[4];
  dn[0] = 2.f * (-z * g[1] + y * g[2] + z * g[3] - x * g[5] - y * g[6] + x * g[7]);
  dn[1] = 2.f * (y * g[1] + z * g[2] + y * g[3] - 2.f * x * g[4] - w * g[5] + z * g[6] + w * g[7] -
                 2.f * x * g[8]);
  dn[2] = 2.f * (-2.f * y * g[0] + x * g[1] + w * g[2] + x * g[3] + z * g[5] - w * g[6] + z * g[7] -
                 2.f * y * g[8]);
  dn[3] = 2.f * (-2.f * z * g[0] - w * g[1] + x * g[2] + w * g[3] - 2.f * z * g[4] + y * g[5] +
                 x * g[6] + y * g[7]);
  if (qnorm_f >= kQuatEps) {
    // qn = q / |q|: dq = (dn - qn (qn . dn)) / |q|
    const double proj = qn[0] * dn[0] + qn[1] * dn[1] + qn[2] * dn[2] + qn[3] * dn[3];
    for (int k = 0; k < 4; ++k) dq[k] = static_cast<float>((dn[k] - qn[k] * proj) / qnorm);
  } else {
    for (int k = 0; k < 4; ++k) dq[k] = static_cast<float>(dn[k] / static_cast<double>(kQuatEps));
  }
}

// (a b c)^T style 3x3 helpers, row-major
inline void matmul33(const double* a, const double* b, double* out) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      out[i * 3 + j] = a[i * 3 + 0] * b[0 * 3 + j] + a[i * 3 + 1] * b[1 * 3 + j] + a[i * 3 + 2] * b[2 * 3 + j];
}

}  // namespace

void project_splat(const Camera& cam, const SplatInputs& in, int64_t i, Projected& p) {
  p.visible = false;
  p.radius = 0.f;
  const float* mean = in.means3D + 3 * i;
  const float px = mean[0], py = mean[1], pz = mean[2];
  // Cull on the view depth (reference: points @ view[:3, 2] + view[3, 2]).
  const float depth = px * cam.view[2] + py * cam.view[6] + pz * cam.view[10] + cam.view[14];
  if (!(depth > kNearCull)) return;
  for (int j = 0; j < 3; ++j) p.t[j] = vdot4(cam.view, j, px, py, pz);
  for (int j = 0; j < 4; ++j) p.hom[j] = vdot4(cam.proj, j, px, py, pz);
  p.inv_w = 1.f / (p.hom[3] + kProjEps);
  const float ndc_x = p.hom[0] / (p.hom[3] + kProjEps);
  const float ndc_y = p.hom[1] / (p.hom[3] + kProjEps);
  p.xy[0] = ((ndc_x + 1.f) * static_cast<float>(cam.width) - 1.f) * 0.5f;
  p.xy[1] = ((ndc_y + 1.f) * static_cast<float>(cam.height) - 1.f) * 0.5f;

  // 3D covariance
  if (in.cov3D) {
    const float* c6 = in.cov3D + 6 * i;
    const float s[9] = {c6[0], c6[1], c6[2], c6[1], c6[3], c6[4], c6[2], c6[4], c6[5]};
    std::copy(s, s + 9, p.sigma);
  } else {
    const float* q = in.rotations + 4 * i;
    p.qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    const float denom = std::max(p.qnorm, kQuatEps);
    for (int k = 0; k < 4; ++k) p.qn[k] = q[k] / denom;
    quat_to_rot(p.qn, p.rot);
    for (int k = 0; k < 3; ++k) p.scale[k] = in.scales[3 * i + k] * cam.scale_modifier;
    float mm[9];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) mm[r * 3 + c] = p.rot[r * 3 + c] * p.scale[c];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c)
        p.sigma[r * 3 + c] = mm[r * 3 + 0] * mm[c * 3 + 0] + mm[r * 3 + 1] * mm[c * 3 + 1] + mm[r * 3 + 2] * mm[c * 3 + 2];
  }

  // EWA projection with the clamped Jacobian
  const float tz = p.t[2];
  const float rx = p.t[0] / tz, ry = p.t[1] / tz;
  p.clamp_x = (rx < cam.lim_x0) || (rx > cam.lim_x1);
  p.clamp_y = (ry < cam.lim_y0) || (ry > cam.lim_y1);
  p.tx_c = p.clamp_x ? std::min(std::max(rx, cam.lim_x0), cam.lim_x1) * tz : p.t[0];
  p.ty_c = p.clamp_y ? std::min(std::max(ry, cam.lim_y0), cam.lim_y1) * tz : p.t[1];
  const float inv_z = 1.f / tz;
  const float inv_z2 = inv_z * inv_z;
  const float j00 = cam.fx * inv_z, j02 = -cam.fx * p.tx_c * inv_z2;
  const float j11 = cam.fy * inv_z, j12 = -cam.fy * p.ty_c * inv_z2;
  // Rv[r][c] = view[c][r]
  for (int c = 0; c < 3; ++c) {
    const float rv0 = cam.view[c * 4 + 0], rv1 = cam.view[c * 4 + 1], rv2 = cam.view[c * 4 + 2];
    p.m[c] = j00 * rv0 + 0.f * rv1 + j02 * rv2;
    p.m[3 + c] = 0.f * rv0 + j11 * rv1 + j12 * rv2;
  }
  float ms[6];  // m @ sigma
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c)
      ms[r * 3 + c] = p.m[r * 3 + 0] * p.sigma[0 * 3 + c] + p.m[r * 3 + 1] * p.sigma[1 * 3 + c] +
                      p.m[r * 3 + 2] * p.sigma[2 * 3 + c];
  const float cov00 = ms[0] * p.m[0] + ms[1] * p.m[1] + ms[2] * p.m[2];
  const float cov01 = ms[0] * p.m[3] + ms[1] * p.m[4] + ms[2] * p.m[5];
  const float cov11 = ms[3] * p.m[3] + ms[4] * p.m[4] + ms[5] * p.m[5];
  p.a = cov00 + kDilation;
  p.b = cov01;
  p.c = cov11 + kDilation;
  p.det = p.a * p.c - p.b * p.b;
  const float mid = 0.5f * (p.a + p.c);
  p.lam = mid + std::sqrt(std::max(mid * mid - p.det, kEigFloor));
  const float radius = std::ceil(3.f * std::sqrt(p.lam));
  if (!(p.det > 0.f) || !std::isfinite(p.det) || !std::isfinite(radius) || !std::isfinite(p.xy[0]) ||
      !std::isfinite(p.xy[1]))
    return;
  const float T = static_cast<float>(kTile);
  p.rect[0] = tile_floor((p.xy[0] - radius) / T, cam.grid_x);
  p.rect[1] = tile_floor((p.xy[1] - radius) / T, cam.grid_y);
  p.rect[2] = tile_floor((p.xy[0] + radius + (T - 1.f)) / T, cam.grid_x);
  p.rect[3] = tile_floor((p.xy[1] + radius + (T - 1.f)) / T, cam.grid_y);
  if (p.rect[2] <= p.rect[0] || p.rect[3] <= p.rect[1]) return;
  p.radius = radius;
  p.conic[0] = p.c / p.det;
  p.conic[1] = -p.b / p.det;
  p.conic[2] = p.a / p.det;

  // Colour
  if (in.colors) {
    for (int k = 0; k < 3; ++k) {
      p.color[k] = in.colors[3 * i + k];
      p.color_clamped[k] = false;
    }
  } else {
    float d[3] = {px - cam.campos[0], py - cam.campos[1], pz - cam.campos[2]};
    p.dir_len = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    for (int k = 0; k < 3; ++k) p.dir[k] = d[k] / p.dir_len;
    float basis[16];
    sh_basis(p.dir, cam.sh_degree, basis);
    const int count = (cam.sh_degree + 1) * (cam.sh_degree + 1);
    const float* sh = in.sh + static_cast<int64_t>(in.sh_k) * 3 * i;
    for (int ch = 0; ch < 3; ++ch) {
      float v = basis[0] * sh[ch];
      for (int k = 1; k < count; ++k) v = v + basis[k] * sh[k * 3 + ch];
      v = v + 0.5f;
      p.color_clamped[ch] = !(v >= 0.f);
      p.color[ch] = std::max(v, 0.f);
    }
  }
  p.visible = true;
}

void project_splat_backward(const Camera& cam, const SplatInputs& in, int64_t i, const Projected& p,
                            const float* d_xy, const float* d_conic, const float* d_color,
                            const SplatGrads& g) {
  double dmean[3] = {0.f, 0.f, 0.f};

  // Pixel mean -> ndc -> homogeneous -> means3D.  means2D gets dL/d ndc.
  const double dndc_x = d_xy[0] * (0.5f * static_cast<float>(cam.width));
  const double dndc_y = d_xy[1] * (0.5f * static_cast<float>(cam.height));
  if (g.means2D) {
    g.means2D[2 * i + 0] = dndc_x;
    g.means2D[2 * i + 1] = dndc_y;
  }
  {
    const double iw = p.inv_w;
    const double dh[4] = {dndc_x * iw, dndc_y * iw, 0.f, -(dndc_x * p.hom[0] + dndc_y * p.hom[1]) * iw * iw};
    for (int r = 0; r < 3; ++r)
      dmean[r] += cam.proj[r * 4 + 0] * dh[0] + cam.proj[r * 4 + 1] * dh[1] + cam.proj[r * 4 + 3] * dh[3];
  }

  // Conic -> dilated cov2D entries (a, b, c).
  const double A = p.a, B = p.b, C = p.c;
  const double det = A * C - B * B;  // = p.det up to float rounding; recomputed in double
  const double inv_det2 = 1.0 / (det * det);
  const double g0 = d_conic[0], g1 = d_conic[1], g2 = d_conic[2];
  const double dA = (-C * C * g0 + B * C * g1 - B * B * g2) * inv_det2;
  const double dB = (2.f * B * C * g0 - (A * C + B * B) * g1 + 2.f * A * B * g2) * inv_det2;
  const double dC = (-B * B * g0 + A * B * g1 - A * A * g2) * inv_det2;
  // Gradient w.r.t. cov2D as a full 2x2 matrix G2 = [[dA, dB], [0, dC]] (entry 10 unused).
  // dL/dSigma (symmetrised) = m^T Gs m with Gs = [[dA, dB/2], [dB/2, dC]];
  // dL/dm = (G2 + G2^T) m Sigma = 2 Gs m Sigma.
  const double gs00 = dA, gs01 = 0.5f * dB, gs11 = dC;
  double m[6];
  for (int k = 0; k < 6; ++k) m[k] = p.m[k];
  double dsig[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      dsig[r * 3 + c] = m[r] * (gs00 * m[c] + gs01 * m[3 + c]) + m[3 + r] * (gs01 * m[c] + gs11 * m[3 + c]);
  double msig[6];
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c)
      msig[r * 3 + c] = m[r * 3 + 0] * p.sigma[c] + m[r * 3 + 1] * p.sigma[3 + c] + m[r * 3 + 2] * p.sigma[6 + c];
  double dm[6];
  for (int c = 0; c < 3; ++c) {
    dm[c] = 2.f * (gs00 * msig[c] + gs01 * msig[3 + c]);
    dm[3 + c] = 2.f * (gs01 * msig[c] + gs11 * msig[3 + c]);
  }
  // m = J Rv: dJ = dm Rv^T, with Rv[k][c] = view[c][k]: dJ[r][k] = sum_c dm[r][c] view[c][k]
  double dj[6];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      dj[r * 3 + k] = dm[r * 3 + 0] * cam.view[0 * 4 + k] + dm[r * 3 + 1] * cam.view[1 * 4 + k] +
                      dm[r * 3 + 2] * cam.view[2 * 4 + k];
  {
    const double tz = p.t[2];
    const double inv_z = 1.f / tz;
    const double inv_z2 = inv_z * inv_z, inv_z3 = inv_z2 * inv_z;
    double dt[3];
    dt[0] = p.clamp_x ? 0.f : dj[2] * (-cam.fx * inv_z2);
    dt[1] = p.clamp_y ? 0.f : dj[5] * (-cam.fy * inv_z2);
    dt[2] = dj[0] * (-cam.fx * inv_z2) + dj[2] * (2.f * cam.fx * p.tx_c * inv_z3) + dj[4] * (-cam.fy * inv_z2) +
            dj[5] * (2.f * cam.fy * p.ty_c * inv_z3);
    // t_j = sum_r p_r view[r][j] + view[3][j]
    for (int r = 0; r < 3; ++r)
      dmean[r] += cam.view[r * 4 + 0] * dt[0] + cam.view[r * 4 + 1] * dt[1] + cam.view[r * 4 + 2] * dt[2];
  }

  // Sigma -> precomputed covariance or (scale, rotation)
  if (in.cov3D) {
    if (g.cov3D) {
      float* o = g.cov3D + 6 * i;
      o[0] = dsig[0];
      o[1] = dsig[1] + dsig[3];
      o[2] = dsig[2] + dsig[6];
      o[3] = dsig[4];
      o[4] = dsig[5] + dsig[7];
      o[5] = dsig[8];
    }
  } else {
    // Sigma = M M^T, M = R diag(s): dM = 2 dSigma M
    double mm[9], dmm[9];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) mm[r * 3 + c] = p.rot[r * 3 + c] * p.scale[c];
    matmul33(dsig, mm, dmm);
    for (int k = 0; k < 9; ++k) dmm[k] *= 2.f;
    if (g.scales) {
      for (int c = 0; c < 3; ++c)
        g.scales[3 * i + c] = (dmm[c] * p.rot[c] + dmm[3 + c] * p.rot[3 + c] + dmm[6 + c] * p.rot[6 + c]) *
                              cam.scale_modifier;
    }
    if (g.rotations) {
      double drot[9];
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) drot[r * 3 + c] = dmm[r * 3 + c] * p.scale[c];
      quat_to_rot_backward(p.qn, p.qnorm, drot, g.rotations + 4 * i);
    }
  }

  // Colour -> SH (and the direction -> means3D) or precomputed colours
  if (in.colors) {
    if (g.colors)
      for (int k = 0; k < 3; ++k) g.colors[3 * i + k] = d_color[k];
  } else {
    double dc[3];
    for (int k = 0; k < 3; ++k) dc[k] = p.color_clamped[k] ? 0.f : d_color[k];
    float basis[16];
    sh_basis(p.dir, cam.sh_degree, basis);
    const int count = (cam.sh_degree + 1) * (cam.sh_degree + 1);
    if (g.sh) {
      float* o = g.sh + static_cast<int64_t>(in.sh_k) * 3 * i;
      for (int k = 0; k < count; ++k)
        for (int ch = 0; ch < 3; ++ch) o[k * 3 + ch] = basis[k] * dc[ch];
    }
    if (cam.sh_degree > 0) {
      float gx[16], gy[16], gz[16];
      sh_basis_grad(p.dir, cam.sh_degree, gx, gy, gz);
      const float* sh = in.sh + static_cast<int64_t>(in.sh_k) * 3 * i;
      double ddir[3] = {0.f, 0.f, 0.f};
      for (int k = 1; k < count; ++k) {
        const double s = sh[k * 3 + 0] * dc[0] + sh[k * 3 + 1] * dc[1] + sh[k * 3 + 2] * dc[2];
        ddir[0] += gx[k] * s;
        ddir[1] += gy[k] * s;
        ddir[2] += gz[k] * s;
      }
      const double proj = ddir[0] * p.dir[0] + ddir[1] * p.dir[1] + ddir[2] * p.dir[2];
      for (int k = 0; k < 3; ++k) dmean[k] += (ddir[k] - p.dir[k] * proj) / p.dir_len;
    }
  }
  if (g.means3D)
    for (int k = 0; k < 3; ++k) g.means3D[3 * i + k] = dmean[k];
}

}  // namespace dgr_cpu
