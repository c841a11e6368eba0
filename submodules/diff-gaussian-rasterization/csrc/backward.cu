// Backward pass of the tile rasterizer.
//
// 1. render_backward_kernel: per tile, back to front, recomputes each pixel's blending state and
//    the gradients w.r.t. each splat's 2D mean, conic, opacity and colour; they are summed over the
//    32 pixels of a warp with a transposing shuffle butterfly, then nine lanes add the nine totals to
//    the splat's accumulator (one atomic instruction per warp and splat instead of 9 per pixel).
// 2. preprocess_backward_kernel: per splat, chains those through the EWA projection, the 3D
//    covariance (scale / quaternion or precomputed) and the SH colour model.
#include "common.cuh"
#include "rasterizer.h"

namespace gsr {

// Sums eight per-lane values over the warp with a transposing butterfly (9 shuffles instead of 40):
// afterwards lane L holds the warp total of value (L >> 2) & 7.
__device__ __forceinline__ float warp_sum8(float v[8], int lane) {
    const bool h16 = lane & 16, h8 = lane & 8, h4 = lane & 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float send = h16 ? v[i] : v[i + 4];
        const float keep = h16 ? v[i + 4] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float send = h8 ? v[i] : v[i + 2];
        const float keep = h8 ? v[i + 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
    }
    {
        const float send = h4 ? v[0] : v[1];
        const float keep = h4 ? v[1] : v[0];
        v[0] = keep + __shfl_xor_sync(0xffffffffu, send, 4);
    }
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
    return v[0];
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void __launch_bounds__(kBlock) render_backward_kernel(
    Camera cam, const int32_t* __restrict__ tile_order, const int64_t* __restrict__ ranges,
    const int32_t* __restrict__ point_list, const float2* __restrict__ xy, const float4* __restrict__ conic_opacity,
    const float* __restrict__ rgb, const float* __restrict__ final_T, const int32_t* __restrict__ n_contrib,
    const float* __restrict__ dL_dpix, float4* __restrict__ accum) {
    __shared__ int s_id[kBlock];
    __shared__ float2 s_xy[kBlock];
    __shared__ float4 s_co[kBlock];
    __shared__ float s_rgb[3][kBlock];
    __shared__ uint32_t s_mask[kBlock];
    __shared__ int s_max_last;

    const int tid = threadIdx.y * kTile + threadIdx.x;
    const int lane = tid & 31;
    const uint32_t warp_bit = 1u << (tid >> 5);
    const int tile = tile_order != nullptr ? tile_order[blockIdx.x] : (int)blockIdx.x;
    const int tile_y0 = (tile / cam.tiles_x) * kTile;
    const int px = (tile % cam.tiles_x) * kTile + threadIdx.x;
    const int py = tile_y0 + threadIdx.y;
    const bool inside = px < cam.width && py < cam.height;
    const int64_t start = ranges[2 * tile];
    const int64_t hw = (int64_t)cam.width * cam.height;
    const int64_t pix = (int64_t)py * cam.width + px;

    float T_final = 1.f, g0 = 0.f, g1 = 0.f, g2 = 0.f;
    int last = 0;
    if (inside) {
        T_final = final_T[pix];
        last = n_contrib[pix];
        g0 = dL_dpix[pix];
        g1 = dL_dpix[hw + pix];
        g2 = dL_dpix[2 * hw + pix];
    }
    if (tid == 0) s_max_last = 0;
    __syncthreads();
    const int warp_max = __reduce_max_sync(0xffffffffu, last);
    if (lane == 0) atomicMax(&s_max_last, warp_max);
    __syncthreads();
    // Only the first max_last splats of the tile's list can have contributed to any pixel.
    const int todo = s_max_last;
    const float bg_dot = g0 * __ldg(cam.bg) + g1 * __ldg(cam.bg + 1) + g2 * __ldg(cam.bg + 2);
    const float fx = (float)px, fy = (float)py;
    const float half_w = 0.5f * cam.width, half_h = 0.5f * cam.height;

    float T = T_final;
    float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f;      // colour of everything behind, normalised
    float last_alpha = 0.f, lc0 = 0.f, lc1 = 0.f, lc2 = 0.f;

    for (int base = 0; base < todo; base += kBlock) {
        __syncthreads();
        const int pos_load = todo - 1 - base - tid;   // position in the tile's list
        if (pos_load >= 0) {
            const int id = point_list[start + pos_load];
            const float2 m = xy[id];
            const float4 co = conic_opacity[id];
            s_id[tid] = id;
            s_xy[tid] = m;
            s_co[tid] = co;
            s_mask[tid] = warp_row_mask(m, co, tile_y0);
            s_rgb[0][tid] = rgb[3 * id];
            s_rgb[1][tid] = rgb[3 * id + 1];
            s_rgb[2][tid] = rgb[3 * id + 2];
        }
        __syncthreads();
        const int cnt = min(kBlock, todo - base);
        auto process = [&](int j) {
            const int pos = todo - 1 - base - j;
            bool contrib = pos < last;
            const float2 m = s_xy[j];
            const float4 co = s_co[j];
            const float dx = m.x - fx, dy = m.y - fy;
            const float power = -0.5f * (co.x * dx * dx + co.z * dy * dy) - co.y * dx * dy;
            contrib = contrib && power <= 0.0f;
            const float G = __expf(power);
            const float raw_alpha = co.w * G;
            const float alpha = fminf(kMaxAlpha, raw_alpha);
            contrib = contrib && alpha >= kMinAlpha;
            if (!__any_sync(0xffffffffu, contrib)) return;

            float gm_x = 0.f, gm_y = 0.f, gop = 0.f, gc_x = 0.f, gc_y = 0.f, gc_z = 0.f;
            float gr = 0.f, gg = 0.f, gb = 0.f;
            if (contrib) {
                T = T / (1.0f - alpha);
                const float w = alpha * T;
                gr = w * g0; gg = w * g1; gb = w * g2;
                const float c0 = s_rgb[0][j], c1 = s_rgb[1][j], c2 = s_rgb[2][j];
                acc0 = last_alpha * lc0 + (1.f - last_alpha) * acc0;
                acc1 = last_alpha * lc1 + (1.f - last_alpha) * acc1;
                acc2 = last_alpha * lc2 + (1.f - last_alpha) * acc2;
                lc0 = c0; lc1 = c1; lc2 = c2;
                float dL_dalpha = ((c0 - acc0) * g0 + (c1 - acc1) * g1 + (c2 - acc2) * g2) * T;
                dL_dalpha += -T_final / (1.f - alpha) * bg_dot;
                last_alpha = alpha;
                // alpha = min(0.99, o G): the clamp passes the gradient straight through (as the original).
                gop = G * dL_dalpha;
                const float dL_dG = co.w * dL_dalpha;
                const float gdx = G * dx, gdy = G * dy;
                // d power / d dx = -(co.x dx + co.y dy); d dx / d mean = 1
                gm_x = -(gdx * co.x + gdy * co.y) * dL_dG * half_w;
                gm_y = -(gdy * co.z + gdx * co.y) * dL_dG * half_h;
                gc_x = -0.5f * gdx * dx * dL_dG;
                gc_y = -gdx * dy * dL_dG;
                gc_z = -0.5f * gdy * dy * dL_dG;
            }
            // accumulator row (12 floats): [mean2D x, y, opacity, -, conic xx, xy, yy, -, r, g, b, -]
            float v[8] = {gm_x, gm_y, gop, gc_x, gc_y, gc_z, gr, gg};
            const float s8 = warp_sum8(v, lane);
            const float s_b = warp_sum(gb);
            float* row = reinterpret_cast<float*>(accum + 3 * (int64_t)s_id[j]);
            if ((lane & 3) == 0) {
                const int k = lane >> 2;
                atomicAdd(row + k + k / 3, s8);
            } else if (lane == 1) {
                atomicAdd(row + 10, s_b);
            }
        };
        // Each warp walks only the splats its two pixel rows can reach (warp-uniform iteration:
        // the shuffles inside `process` see the whole warp).
        for (int c0 = 0; c0 < cnt; c0 += 32) {
            const int jj = c0 + lane;
            uint32_t bits = __ballot_sync(0xffffffffu, jj < cnt && (s_mask[jj] & warp_bit));
            while (bits) {
                const int j = c0 + __ffs(bits) - 1;
                bits &= bits - 1;
                process(j);
            }
        }
    }
}

void launch_render_backward(const Camera& cam, const int32_t* tile_order, const int64_t* ranges,
                            const int32_t* point_list, const SplatState& st, const float* final_T,
                            const int32_t* n_contrib, const float* dL_dpixels, float4* accum, cudaStream_t s) {
    const dim3 grid(cam.tiles_x * cam.tiles_y), block(kTile, kTile);
    render_backward_kernel<<<grid, block, 0, s>>>(cam, tile_order, ranges, point_list, st.xy, st.conic_opacity,
                                                   st.rgb, final_T, n_contrib, dL_dpixels, accum);
}

// Gradient of the SH basis functions w.r.t. the (unit) direction, weighted: returns sum_k w[k] grad b_k.
__device__ __forceinline__ float3 sh_dir_grad(int deg, float x, float y, float z, const float w[16]) {
    float3 g = make_float3(0.f, 0.f, 0.f);
    if (deg < 1) return g;
    g.x += -kSH1 * w[3];
    g.y += -kSH1 * w[1];
    g.z += kSH1 * w[2];
    if (deg < 2) return g;
    g.x += kSH2[0] * y * w[4];              g.y += kSH2[0] * x * w[4];
    g.y += kSH2[1] * z * w[5];              g.z += kSH2[1] * y * w[5];
    g.x += -2.f * kSH2[2] * x * w[6];       g.y += -2.f * kSH2[2] * y * w[6];     g.z += 4.f * kSH2[2] * z * w[6];
    g.x += kSH2[3] * z * w[7];              g.z += kSH2[3] * x * w[7];
    g.x += 2.f * kSH2[4] * x * w[8];        g.y += -2.f * kSH2[4] * y * w[8];
    if (deg < 3) return g;
    const float xx = x * x, yy = y * y, zz = z * z;
    g.x += kSH3[0] * 6.f * x * y * w[9];
    g.y += kSH3[0] * 3.f * (xx - yy) * w[9];
    g.x += kSH3[1] * y * z * w[10];  g.y += kSH3[1] * x * z * w[10];  g.z += kSH3[1] * x * y * w[10];
    g.x += kSH3[2] * -2.f * x * y * w[11];
    g.y += kSH3[2] * (4.f * zz - xx - 3.f * yy) * w[11];
    g.z += kSH3[2] * 8.f * y * z * w[11];
    g.x += kSH3[3] * -6.f * x * z * w[12];
    g.y += kSH3[3] * -6.f * y * z * w[12];
    g.z += kSH3[3] * (6.f * zz - 3.f * xx - 3.f * yy) * w[12];
    g.x += kSH3[4] * (4.f * zz - 3.f * xx - yy) * w[13];
    g.y += kSH3[4] * -2.f * x * y * w[13];
    g.z += kSH3[4] * 8.f * x * z * w[13];
    g.x += kSH3[5] * 2.f * x * z * w[14];
    g.y += kSH3[5] * -2.f * y * z * w[14];
    g.z += kSH3[5] * (xx - yy) * w[14];
    g.x += kSH3[6] * 3.f * (xx - yy) * w[15];
    g.y += kSH3[6] * -6.f * x * y * w[15];
    return g;
}

__global__ void preprocess_backward_kernel(Camera cam, SplatInputs in, const int* __restrict__ radii,
                                           const float4* __restrict__ accum, SplatGrads g) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= in.n) return;
    load_intrinsics(cam);
    const int nb_all = cam.sh_coeffs;
    if (radii[i] <= 0) {
        for (int k = 0; k < 3; ++k) { g.means3D[3 * i + k] = 0.f; g.means2D[3 * i + k] = 0.f; }
        g.opacities[i] = 0.f;
        if (g.colors) for (int k = 0; k < 3; ++k) g.colors[3 * i + k] = 0.f;
        if (g.cov3D) for (int k = 0; k < 6; ++k) g.cov3D[6 * i + k] = 0.f;
        if (g.shs) {
            float zero[48];
#pragma unroll
            for (int k = 0; k < 48; ++k) zero[k] = 0.f;
            store_row(g.shs + (int64_t)i * nb_all * 3, 0, 3 * nb_all, rows_vectorisable(g.shs, 3 * nb_all), zero);
        }
        if (g.scales) for (int k = 0; k < 3; ++k) g.scales[3 * i + k] = 0.f;
        if (g.rotations) for (int k = 0; k < 4; ++k) g.rotations[4 * i + k] = 0.f;
        return;
    }
    const float4 a0 = accum[3 * (int64_t)i], a1 = accum[3 * (int64_t)i + 1], a2 = accum[3 * (int64_t)i + 2];
    const float3 p = make_float3(in.means[3 * i], in.means[3 * i + 1], in.means[3 * i + 2]);
    float dp[3] = {0.f, 0.f, 0.f};

    // --- projection of the mean: dL/dndc -> dL/dp
    {
        const float4 ph = proj_point(cam, p);
        const float mw = 1.0f / (ph.w + 1e-7f);
        const float* P = cam.proj;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const float pk0 = __ldg(P + 4 * k), pk1 = __ldg(P + 4 * k + 1), pk3 = __ldg(P + 4 * k + 3);
            dp[k] += a0.x * (pk0 * mw - pk3 * ph.x * mw * mw) + a0.y * (pk1 * mw - pk3 * ph.y * mw * mw);
        }
        g.means2D[3 * i] = a0.x;
        g.means2D[3 * i + 1] = a0.y;
        g.means2D[3 * i + 2] = 0.f;
        g.opacities[i] = a0.z;
    }

    // --- covariance: conic -> cov2D -> (J, Sigma) -> (mean, cov3D | scale, rotation)
    float cov[6];
    float r[9];
    float3 s = make_float3(0.f, 0.f, 0.f);
    float4 q_raw = make_float4(1.f, 0.f, 0.f, 0.f), q = q_raw;
    float q_inv_norm = 1.f;
    const bool precomp = in.cov3D != nullptr;
    if (precomp) {
#pragma unroll
        for (int k = 0; k < 6; ++k) cov[k] = in.cov3D[6 * i + k];
    } else {
        const float m = cam.scale_modifier;
        s = make_float3(in.scales[3 * i] * m, in.scales[3 * i + 1] * m, in.scales[3 * i + 2] * m);
        q_raw = make_float4(in.rotations[4 * i], in.rotations[4 * i + 1], in.rotations[4 * i + 2],
                            in.rotations[4 * i + 3]);
        q = normalize_quat(q_raw, q_inv_norm);
        quat_to_rot(q, r);
        cov3d_from_scale_rot(s, q, cov);
    }
    const float3 t = view_point(cam, p);
    const EwaJacobian e = ewa_jacobian(cam, t);
    float u0[3], u1[3];
    sym_mul(cov, e.t0, u0);
    sym_mul(cov, e.t1, u1);
    const float a = e.t0[0] * u0[0] + e.t0[1] * u0[1] + e.t0[2] * u0[2] + kDilation;
    const float b = e.t0[0] * u1[0] + e.t0[1] * u1[1] + e.t0[2] * u1[2];
    const float c = e.t1[0] * u1[0] + e.t1[1] * u1[1] + e.t1[2] * u1[2] + kDilation;
    const float det = a * c - b * b;
    const float id2 = 1.0f / (det * det);
    const float gqx = a1.x, gqy = a1.y, gqz = a1.z;
    const float ga = (-c * c * gqx + b * c * gqy - b * b * gqz) * id2;
    const float gc = (-b * b * gqx + a * b * gqy - a * a * gqz) * id2;
    const float gb = (2.f * b * c * gqx - (a * c + b * b) * gqy + 2.f * a * b * gqz) * id2;

    // dL/dSigma (symmetric matrix entries), S_kl = ga T0k T0l + gb/2 (T0k T1l + T1k T0l) + gc T1k T1l
    float S[6];
    {
        const float* t0 = e.t0; const float* t1 = e.t1;
        const int kk[6] = {0, 0, 0, 1, 1, 2}, ll[6] = {0, 1, 2, 1, 2, 2};
#pragma unroll
        for (int q = 0; q < 6; ++q) {
            const int k = kk[q], l = ll[q];
            S[q] = ga * t0[k] * t0[l] + 0.5f * gb * (t0[k] * t1[l] + t1[k] * t0[l]) + gc * t1[k] * t1[l];
        }
    }
    // dL/dT rows, then dL/dJ entries
    float dT0[3], dT1[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        dT0[k] = 2.f * ga * u0[k] + gb * u1[k];
        dT1[k] = gb * u0[k] + 2.f * gc * u1[k];
    }
    const float* V = cam.view;
    float w0[3], w1[3], w2[3];  // rows of the view rotation W: W(j, k) = V[4k + j]
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        w0[k] = __ldg(V + 4 * k);
        w1[k] = __ldg(V + 4 * k + 1);
        w2[k] = __ldg(V + 4 * k + 2);
    }
    const float dJ00 = dT0[0] * w0[0] + dT0[1] * w0[1] + dT0[2] * w0[2];
    const float dJ02 = dT0[0] * w2[0] + dT0[1] * w2[1] + dT0[2] * w2[2];
    const float dJ11 = dT1[0] * w1[0] + dT1[1] * w1[1] + dT1[2] * w1[2];
    const float dJ12 = dT1[0] * w2[0] + dT1[1] * w2[1] + dT1[2] * w2[2];
    const float iz = 1.0f / t.z, iz2 = iz * iz, iz3 = iz2 * iz;
    float dtx = 0.f, dty = 0.f;
    float dtz = -cam.focal_x * iz2 * dJ00 - cam.focal_y * iz2 * dJ11;
    // J02 = -fx tx / tz^2; a clamped tx is a constant (no path to t_x or t_z through the clamp).
    dtz += 2.f * cam.focal_x * e.tx * iz3 * dJ02 + 2.f * cam.focal_y * e.ty * iz3 * dJ12;
    if (!e.clamped_x) dtx += -cam.focal_x * iz2 * dJ02;
    if (!e.clamped_y) dty += -cam.focal_y * iz2 * dJ12;
#pragma unroll
    for (int k = 0; k < 3; ++k) dp[k] += w0[k] * dtx + w1[k] * dty + w2[k] * dtz;

    if (precomp) {
        g.cov3D[6 * i + 0] = S[0];
        g.cov3D[6 * i + 1] = 2.f * S[1];
        g.cov3D[6 * i + 2] = 2.f * S[2];
        g.cov3D[6 * i + 3] = S[3];
        g.cov3D[6 * i + 4] = 2.f * S[4];
        g.cov3D[6 * i + 5] = S[5];
    } else {
        // Sigma = M M^T, M = R diag(s): dL/dM = 2 S M; dL/ds_i = sum_k R_ki dM_ki; dL/dR_ki = dM_ki s_i
        const float sv[3] = {s.x, s.y, s.z};
        const float Sf[9] = {S[0], S[1], S[2], S[1], S[3], S[4], S[2], S[4], S[5]};
        float dR[9];
        float ds[3] = {0.f, 0.f, 0.f};
#pragma unroll
        for (int k = 0; k < 3; ++k) {
#pragma unroll
            for (int col = 0; col < 3; ++col) {
                // M_l,col = R_l,col * s_col
                float dm = 0.f;
#pragma unroll
                for (int l = 0; l < 3; ++l) dm += Sf[3 * k + l] * r[3 * l + col] * sv[col];
                dm *= 2.f;
                ds[col] += r[3 * k + col] * dm;
                dR[3 * k + col] = dm * sv[col];
            }
        }
        const float mod = cam.scale_modifier;
        g.scales[3 * i] = ds[0] * mod;
        g.scales[3 * i + 1] = ds[1] * mod;
        g.scales[3 * i + 2] = ds[2] * mod;
        const float qw = q.x, qx = q.y, qy = q.z, qz = q.w;
        float dq[4];
        dq[0] = 2.f * (-qz * dR[1] + qy * dR[2] + qz * dR[3] - qx * dR[5] - qy * dR[6] + qx * dR[7]);
        dq[1] = 2.f * (qy * dR[1] + qz * dR[2] + qy * dR[3] - 2.f * qx * dR[4] - qw * dR[5] + qz * dR[6] +
                       qw * dR[7] - 2.f * qx * dR[8]);
        dq[2] = 2.f * (-2.f * qy * dR[0] + qx * dR[1] + qw * dR[2] + qx * dR[3] + qz * dR[5] - qw * dR[6] +
                       qz * dR[7] - 2.f * qy * dR[8]);
        dq[3] = 2.f * (-2.f * qz * dR[0] - qw * dR[1] + qx * dR[2] + qw * dR[3] - 2.f * qz * dR[4] + qy * dR[5] +
                       qx * dR[6] + qy * dR[7]);
        // q_n = q / max(|q|, eps): dL/dq = (dL/dq_n - q_n (q_n . dL/dq_n)) / |q| (only the scaling when clamped)
        const float qn2 = q_raw.x * q_raw.x + q_raw.y * q_raw.y + q_raw.z * q_raw.z + q_raw.w * q_raw.w;
        const float proj = (sqrtf(qn2) > 1e-12f) ? (qw * dq[0] + qx * dq[1] + qy * dq[2] + qz * dq[3]) : 0.f;
        g.rotations[4 * i] = (dq[0] - qw * proj) * q_inv_norm;
        g.rotations[4 * i + 1] = (dq[1] - qx * proj) * q_inv_norm;
        g.rotations[4 * i + 2] = (dq[2] - qy * proj) * q_inv_norm;
        g.rotations[4 * i + 3] = (dq[3] - qz * proj) * q_inv_norm;
    }

    // --- colour
    if (in.colors != nullptr) {
        g.colors[3 * i] = a2.x; g.colors[3 * i + 1] = a2.y; g.colors[3 * i + 2] = a2.z;
    } else {
        const int deg = cam.sh_degree;
        const int nb = (deg + 1) * (deg + 1);
        float vx = p.x - __ldg(cam.campos), vy = p.y - __ldg(cam.campos + 1), vz = p.z - __ldg(cam.campos + 2);
        const float inv = rsqrtf(vx * vx + vy * vy + vz * vz);
        const float x = vx * inv, y = vy * inv, z = vz * inv;
        float basis[16] = {};
        sh_basis(deg, x, y, z, basis);
        float sh[48];
        load_row48(in.shs + (int64_t)i * nb_all * 3, 3 * nb, rows_vectorisable(in.shs, 3 * nb_all), sh);
        float raw[3] = {0.5f, 0.5f, 0.5f};
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            if (k < nb) {
                raw[0] += basis[k] * sh[3 * k];
                raw[1] += basis[k] * sh[3 * k + 1];
                raw[2] += basis[k] * sh[3 * k + 2];
            }
        }
        const float gr = raw[0] < 0.f ? 0.f : a2.x;
        const float gg = raw[1] < 0.f ? 0.f : a2.y;
        const float gbl = raw[2] < 0.f ? 0.f : a2.z;
        float dsh[48];
        float wsh[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            dsh[3 * k] = basis[k] * gr;
            dsh[3 * k + 1] = basis[k] * gg;
            dsh[3 * k + 2] = basis[k] * gbl;
            wsh[k] = (k < nb) ? sh[3 * k] * gr + sh[3 * k + 1] * gg + sh[3 * k + 2] * gbl : 0.f;
        }
        store_row(g.shs + (int64_t)i * nb_all * 3, 3 * nb, 3 * nb_all, rows_vectorisable(g.shs, 3 * nb_all), dsh);
        const float3 gd = sh_dir_grad(deg, x, y, z, wsh);
        // d normalize(v) / dv = (I - n n^T) / |v|
        const float ndot = x * gd.x + y * gd.y + z * gd.z;
        dp[0] += (gd.x - x * ndot) * inv;
        dp[1] += (gd.y - y * ndot) * inv;
        dp[2] += (gd.z - z * ndot) * inv;
    }
    g.means3D[3 * i] = dp[0];
    g.means3D[3 * i + 1] = dp[1];
    g.means3D[3 * i + 2] = dp[2];
}

void launch_preprocess_backward(const Camera& cam, const SplatInputs& in, const int* radii, const float4* accum,
                                const SplatGrads& g, cudaStream_t s) {
    if (in.n == 0) return;
    preprocess_backward_kernel<<<(in.n + 255) / 256, 256, 0, s>>>(cam, in, radii, accum, g);
}

}  // namespace gsr
