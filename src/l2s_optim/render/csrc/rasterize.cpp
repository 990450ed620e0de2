// A compiled CPU 3DGS rasterizer: projection, SH colours and alpha compositing, forward and hand-written backward.
//
// The math is that of l2s_optim/render/cpu.py (the readable pure-PyTorch reference), which follows gsplat 1.5.3:
// EWA projection with gsplat's frustum clamp of the Jacobian, an eps2d low-pass, opacity-aware footprints of at most
// 3.33 sigma, alpha = min(0.999, opacity * exp(-sigma)), alphas below 1/255 skipped, front-to-back compositing that
// stops before transmittance would fall to 1e-4, pixel centres at +0.5.
//
// Compositing walks the visible Gaussians in depth order and, for each, the pixels of its footprint: no pair list and
// no pair sort. The image is split into bands of kBandRows rows; each band keeps its Gaussians (depth order) and is
// composited independently, so bands run in parallel. The backward walks each band's Gaussians back to front and
// recovers the transmittance by division, as gsplat does. Per-Gaussian gradients are first written per (band, Gaussian)
// and then summed over bands in band order, so the result is bit-identical at any thread count.
//
// Tensors are contiguous, on the CPU, float32 or float64 (templated, so gradcheck runs on it).

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kAlphaMax = 0.999;
constexpr double kTransmittanceMin = 1e-4;
constexpr double kMaxExtend = 3.33;
constexpr int64_t kBandRows = 16;
constexpr int64_t kGaussiansPerTask = 2048;

// Runs body(task) for every task in [0, tasks) on torch's intra-op threads (at::get_num_threads(); the extension is
// built with OpenMP and shares torch's libgomp, so no second pool competes for the cores). Each thread claims the next
// task from a shared counter. What a task computes depends only on its index, so results are the same whatever the
// thread count. at::parallel_for rethrows a task's exception after the threads have finished.
template <typename F>
void parallel_tasks(int64_t tasks, const F& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), tasks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) body(t);
  });
}

// Runs body(n) for n in [0, count) in parallel chunks.
template <typename F>
void parallel_gaussians(int64_t count, const F& body) {
  parallel_tasks((count + kGaussiansPerTask - 1) / kGaussiansPerTask, [&](int64_t task) {
    const int64_t end = std::min(count, (task + 1) * kGaussiansPerTask);
    for (int64_t n = task * kGaussiansPerTask; n < end; ++n) body(n);
  });
}

void check_input(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// ------------------------------------------------------------------------------------------------ projection

// One pinhole camera: world-to-camera rotation R (row-major) and translation t, intrinsics and the Jacobian's clamp.
template <typename T>
struct Camera {
  T R[3][3], t[3], fx, fy, cx, cy, lim_x_lo, lim_x_hi, lim_y_lo, lim_y_hi;

  Camera(const T* viewmat, const T* K, int64_t width, int64_t height) {
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) R[i][j] = viewmat[i * 4 + j];
      t[i] = viewmat[i * 4 + 3];
    }
    fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const T tan_x = T(0.5) * width / fx, tan_y = T(0.5) * height / fy;
    lim_x_lo = -(cx / fx + T(0.3) * tan_x), lim_x_hi = (width - cx) / fx + T(0.3) * tan_x;
    lim_y_lo = -(cy / fy + T(0.3) * tan_y), lim_y_hi = (height - cy) / fy + T(0.3) * tan_y;
  }
};

// Rotation matrix of a quaternion (w, x, y, z) normalised as F.normalize does (norm clamped at 1e-12).
template <typename T>
void quat_to_rotmat(const T* q, T unit[4], T& norm, T Rq[3][3]) {
  norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T inv = T(1) / std::max(norm, T(1e-12));
  for (int i = 0; i < 4; ++i) unit[i] = q[i] * inv;
  const T w = unit[0], x = unit[1], y = unit[2], z = unit[3];
  Rq[0][0] = 1 - 2 * (y * y + z * z), Rq[0][1] = 2 * (x * y - w * z), Rq[0][2] = 2 * (x * z + w * y);
  Rq[1][0] = 2 * (x * y + w * z), Rq[1][1] = 1 - 2 * (x * x + z * z), Rq[1][2] = 2 * (y * z - w * x);
  Rq[2][0] = 2 * (x * z - w * y), Rq[2][1] = 2 * (y * z + w * x), Rq[2][2] = 1 - 2 * (x * x + y * y);
}

// Everything the forward computes for one Gaussian in one camera, kept for the backward.
template <typename T>
struct Projected {
  T mean_c[3], unit_q[4], q_norm, Rq[3][3], M[3][3], cov_c[3][3], safe_z, u, v, tx, ty, J[2][3], a, b, c, det;
  bool x_inside, y_inside;

  Projected(const Camera<T>& cam, const T* mean, const T* quat, const T* scale) {
    for (int i = 0; i < 3; ++i)
      mean_c[i] = cam.R[i][0] * mean[0] + cam.R[i][1] * mean[1] + cam.R[i][2] * mean[2] + cam.t[i];
    quat_to_rotmat(quat, unit_q, q_norm, Rq);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) M[i][j] = Rq[i][j] * scale[j];
    T cov[3][3], RC[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) cov[i][j] = M[i][0] * M[j][0] + M[i][1] * M[j][1] + M[i][2] * M[j][2];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) RC[i][j] = cam.R[i][0] * cov[0][j] + cam.R[i][1] * cov[1][j] + cam.R[i][2] * cov[2][j];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) cov_c[i][j] = RC[i][0] * cam.R[j][0] + RC[i][1] * cam.R[j][1] + RC[i][2] * cam.R[j][2];
    const T x = mean_c[0], y = mean_c[1], z = mean_c[2];
    safe_z = z > 0 ? z : T(1);
    u = x / safe_z, v = y / safe_z;
    x_inside = u >= cam.lim_x_lo && u <= cam.lim_x_hi;
    y_inside = v >= cam.lim_y_lo && v <= cam.lim_y_hi;
    tx = safe_z * std::min(std::max(u, cam.lim_x_lo), cam.lim_x_hi);
    ty = safe_z * std::min(std::max(v, cam.lim_y_lo), cam.lim_y_hi);
    const T z2 = safe_z * safe_z;
    J[0][0] = cam.fx / safe_z, J[0][1] = 0, J[0][2] = -cam.fx * tx / z2;
    J[1][0] = 0, J[1][1] = cam.fy / safe_z, J[1][2] = -cam.fy * ty / z2;
    T JC[2][3];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) JC[i][j] = J[i][0] * cov_c[0][j] + J[i][1] * cov_c[1][j] + J[i][2] * cov_c[2][j];
    a = JC[0][0] * J[0][0] + JC[0][1] * J[0][1] + JC[0][2] * J[0][2];
    b = JC[0][0] * J[1][0] + JC[0][1] * J[1][1] + JC[0][2] * J[1][2];
    c = JC[1][0] * J[1][0] + JC[1][1] * J[1][1] + JC[1][2] * J[1][2];
  }
};

template <typename T>
void project_forward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                          const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width,
                          int64_t height, double near_plane, double far_plane, double eps2d, at::Tensor& means2d,
                          at::Tensor& conics, at::Tensor& depths, at::Tensor& radii) {
  const int64_t C = viewmats.size(0), N = means.size(0);
  const T *mp = means.data_ptr<T>(), *qp = quats.data_ptr<T>(), *sp = scales.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();
  T *m2 = means2d.data_ptr<T>(), *co = conics.data_ptr<T>(), *dp = depths.data_ptr<T>();
  int32_t* rp = radii.data_ptr<int32_t>();
  for (int64_t cam_id = 0; cam_id < C; ++cam_id) {
    const Camera<T> cam(viewmats.data_ptr<T>() + cam_id * 16, Ks.data_ptr<T>() + cam_id * 9, width, height);
    parallel_gaussians(N, [&](int64_t n) {
      const Projected<T> p(cam, mp + 3 * n, qp + 4 * n, sp + 3 * n);
      const int64_t out = cam_id * N + n;
      const T a = p.a + T(eps2d), b = p.b, c = p.c + T(eps2d);
      const T det = a * c - b * b, safe_det = det > 0 ? det : T(1);
      co[3 * out] = c / safe_det, co[3 * out + 1] = -b / safe_det, co[3 * out + 2] = a / safe_det;
      const T mx = cam.fx * p.mean_c[0] / p.safe_z + cam.cx, my = cam.fy * p.mean_c[1] / p.safe_z + cam.cy;
      m2[2 * out] = mx, m2[2 * out + 1] = my;
      const T z = p.mean_c[2];
      dp[out] = z;
      const T threshold = T(kAlphaThreshold);
      const T extend = std::min(std::sqrt(2 * std::log(std::max(op[n], threshold) / threshold)), T(kMaxExtend));
      const T largest = T(1 << 30);  // radii stay representable as int32 (such a Gaussian covers any image)
      const T rx = std::min(std::ceil(extend * std::sqrt(a)), largest);
      const T ry = std::min(std::ceil(extend * std::sqrt(c)), largest);
      const bool visible = z >= T(near_plane) && z <= T(far_plane) && det > 0 && op[n] >= threshold &&
                           mx + rx > 0 && mx - rx < width && my + ry > 0 && my - ry < height;
      rp[2 * out] = visible ? static_cast<int32_t>(rx) : 0;
      rp[2 * out + 1] = visible ? static_cast<int32_t>(ry) : 0;
    });
  }
}

template <typename T>
void project_backward_impl(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                           const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height,
                           double eps2d, const at::Tensor& v_means2d, const at::Tensor& v_conics,
                           const at::Tensor& v_depths, at::Tensor& v_means, at::Tensor& v_quats, at::Tensor& v_scales) {
  const int64_t C = viewmats.size(0), N = means.size(0);
  const T *mp = means.data_ptr<T>(), *qp = quats.data_ptr<T>(), *sp = scales.data_ptr<T>();
  const T *vm2 = v_means2d.data_ptr<T>(), *vco = v_conics.data_ptr<T>(), *vd = v_depths.data_ptr<T>();
  T *vmp = v_means.data_ptr<T>(), *vqp = v_quats.data_ptr<T>(), *vsp = v_scales.data_ptr<T>();
  std::vector<Camera<T>> cams;
  for (int64_t cam_id = 0; cam_id < C; ++cam_id)
    cams.emplace_back(viewmats.data_ptr<T>() + cam_id * 16, Ks.data_ptr<T>() + cam_id * 9, width, height);
  parallel_gaussians(N, [&](int64_t n) {
    T g_mean[3] = {0, 0, 0}, g_quat[4] = {0, 0, 0, 0}, g_scale[3] = {0, 0, 0};
    for (int64_t cam_id = 0; cam_id < C; ++cam_id) {  // cameras in order: a fixed summation order
      const Camera<T>& cam = cams[cam_id];
      const Projected<T> p(cam, mp + 3 * n, qp + 4 * n, sp + 3 * n);
      const int64_t in = cam_id * N + n;
      // conic = (c, -b, a) / det of the low-passed 2D covariance (a, b, c); det is a constant 1 when not positive
      const T a = p.a + T(eps2d), b = p.b, c = p.c + T(eps2d), det = a * c - b * b;
      const T vA = vco[3 * in], vB = vco[3 * in + 1], vC = vco[3 * in + 2];
      T v_a = vC, v_b = -vB, v_c = vA;
      if (det > 0) {
        const T inv = T(1) / det, v_det = -(vA * c - vB * b + vC * a) * inv * inv;
        v_a = vC * inv + v_det * c, v_b = -vB * inv - 2 * b * v_det, v_c = vA * inv + v_det * a;
      }
      // cov2d = J cov_c J^T: a, b, c are its entries (0,0), (0,1), (1,1)
      const T G[2][2] = {{v_a, v_b}, {0, v_c}};
      T v_cov_c[3][3], v_J[2][3], JC[2][3];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) JC[i][j] = p.J[i][0] * p.cov_c[0][j] + p.J[i][1] * p.cov_c[1][j] + p.J[i][2] * p.cov_c[2][j];
      for (int k = 0; k < 3; ++k)
        for (int l = 0; l < 3; ++l) {
          T sum = 0;
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) sum += p.J[i][k] * G[i][j] * p.J[j][l];
          v_cov_c[k][l] = sum;
        }
      for (int i = 0; i < 2; ++i)  // dL/dJ = G J cov_c^T + G^T J cov_c
        for (int l = 0; l < 3; ++l) {
          T sum = 0;
          for (int j = 0; j < 2; ++j) {
            const T JCt = p.J[j][0] * p.cov_c[l][0] + p.J[j][1] * p.cov_c[l][1] + p.J[j][2] * p.cov_c[l][2];
            sum += G[i][j] * JCt + G[j][i] * JC[j][l];
          }
          v_J[i][l] = sum;
        }
      // J from the clamped tx, ty and safe_z; means2d from x, y and safe_z
      const T sz = p.safe_z, sz2 = sz * sz, sz3 = sz2 * sz;
      const T vm_x = vm2[2 * in], vm_y = vm2[2 * in + 1];
      const T v_tx = -cam.fx / sz2 * v_J[0][2], v_ty = -cam.fy / sz2 * v_J[1][2];
      T v_sz = -cam.fx / sz2 * v_J[0][0] + 2 * cam.fx * p.tx / sz3 * v_J[0][2] - cam.fy / sz2 * v_J[1][1] +
               2 * cam.fy * p.ty / sz3 * v_J[1][2];
      T v_mc[3] = {cam.fx / sz * vm_x, cam.fy / sz * vm_y, vd[in]};
      v_sz -= cam.fx * p.mean_c[0] / sz2 * vm_x + cam.fy * p.mean_c[1] / sz2 * vm_y;
      if (p.x_inside) v_mc[0] += v_tx; else v_sz += v_tx * (p.tx / sz);
      if (p.y_inside) v_mc[1] += v_ty; else v_sz += v_ty * (p.ty / sz);
      if (p.mean_c[2] > 0) v_mc[2] += v_sz;
      for (int j = 0; j < 3; ++j) g_mean[j] += cam.R[0][j] * v_mc[0] + cam.R[1][j] * v_mc[1] + cam.R[2][j] * v_mc[2];
      // cov_c = R cov R^T, cov = M M^T, M = Rq diag(scale)
      T v_cov[3][3], RV[3][3], v_M[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          RV[i][j] = cam.R[0][i] * v_cov_c[0][j] + cam.R[1][i] * v_cov_c[1][j] + cam.R[2][i] * v_cov_c[2][j];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) v_cov[i][j] = RV[i][0] * cam.R[0][j] + RV[i][1] * cam.R[1][j] + RV[i][2] * cam.R[2][j];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          T sum = 0;
          for (int k = 0; k < 3; ++k) sum += (v_cov[i][k] + v_cov[k][i]) * p.M[k][j];
          v_M[i][j] = sum;
        }
      T V[3][3];
      for (int j = 0; j < 3; ++j) {
        g_scale[j] += v_M[0][j] * p.Rq[0][j] + v_M[1][j] * p.Rq[1][j] + v_M[2][j] * p.Rq[2][j];
        for (int i = 0; i < 3; ++i) V[i][j] = v_M[i][j] * sp[3 * n + j];
      }
      const T w = p.unit_q[0], x = p.unit_q[1], y = p.unit_q[2], z = p.unit_q[3];
      const T v_unit[4] = {
          2 * (-z * V[0][1] + y * V[0][2] + z * V[1][0] - x * V[1][2] - y * V[2][0] + x * V[2][1]),
          2 * (y * V[0][1] + z * V[0][2] + y * V[1][0] - 2 * x * V[1][1] - w * V[1][2] + z * V[2][0] + w * V[2][1] -
               2 * x * V[2][2]),
          2 * (-2 * y * V[0][0] + x * V[0][1] + w * V[0][2] + x * V[1][0] + z * V[1][2] - w * V[2][0] + z * V[2][1] -
               2 * y * V[2][2]),
          2 * (-2 * z * V[0][0] - w * V[0][1] + x * V[0][2] + w * V[1][0] - 2 * z * V[1][1] + y * V[1][2] +
               x * V[2][0] + y * V[2][1]),
      };
      if (p.q_norm > T(1e-12)) {  // unit = q / |q|
        const T dot = w * v_unit[0] + x * v_unit[1] + y * v_unit[2] + z * v_unit[3];
        for (int i = 0; i < 4; ++i) g_quat[i] += (v_unit[i] - p.unit_q[i] * dot) / p.q_norm;
      } else {  // unit = q / 1e-12
        for (int i = 0; i < 4; ++i) g_quat[i] += v_unit[i] / T(1e-12);
      }
    }
    for (int i = 0; i < 3; ++i) vmp[3 * n + i] = g_mean[i], vsp[3 * n + i] = g_scale[i];
    for (int i = 0; i < 4; ++i) vqp[4 * n + i] = g_quat[i];
  });
}

// ------------------------------------------------------------------------------------------------ SH colours

constexpr double kShC0 = 0.28209479177387814, kShC1 = 0.4886025119029199;
constexpr double kShC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                             0.5462742152960396};
constexpr double kShC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                             -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

// Real SH basis (3DGS sign convention) of degree <= 3 at the direction d, normalised as F.normalize does.
template <typename T>
void sh_basis(const T* d, int64_t degree, T* out) {
  const T norm = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), T(1e-12));
  const T x = d[0] / norm, y = d[1] / norm, z = d[2] / norm;
  out[0] = T(kShC0);
  if (degree < 1) return;
  out[1] = -T(kShC1) * y, out[2] = T(kShC1) * z, out[3] = -T(kShC1) * x;
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  out[4] = T(kShC2[0]) * xy, out[5] = T(kShC2[1]) * yz, out[6] = T(kShC2[2]) * (2 * zz - xx - yy);
  out[7] = T(kShC2[3]) * xz, out[8] = T(kShC2[4]) * (xx - yy);
  if (degree < 3) return;
  out[9] = T(kShC3[0]) * y * (3 * xx - yy), out[10] = T(kShC3[1]) * xy * z;
  out[11] = T(kShC3[2]) * y * (4 * zz - xx - yy), out[12] = T(kShC3[3]) * z * (2 * zz - 3 * xx - 3 * yy);
  out[13] = T(kShC3[4]) * x * (4 * zz - xx - yy), out[14] = T(kShC3[5]) * z * (xx - yy);
  out[15] = T(kShC3[6]) * x * (xx - 3 * yy);
}

// The raw colour sum_k basis_k coeffs_k + 0.5 of one Gaussian seen along one direction (3 channels).
template <typename T>
void sh_colour(const T* coeffs, const T* basis, int64_t used, T* out) {
  for (int ch = 0; ch < 3; ++ch) {
    T sum = T(0.5);
    for (int64_t k = 0; k < used; ++k) sum += basis[k] * coeffs[3 * k + ch];
    out[ch] = sum;
  }
}

template <typename T>
void sh_forward_impl(const at::Tensor& coeffs, const at::Tensor& dirs, int64_t degree, at::Tensor& colors) {
  const int64_t C = dirs.size(0), N = dirs.size(1), K = coeffs.size(1), used = (degree + 1) * (degree + 1);
  const T *cp = coeffs.data_ptr<T>(), *dp = dirs.data_ptr<T>();
  T* out = colors.data_ptr<T>();
  parallel_gaussians(C * N, [&](int64_t i) {
    T basis[16], raw[3];
    sh_basis(dp + 3 * i, degree, basis);
    sh_colour(cp + (i % N) * K * 3, basis, used, raw);
    for (int ch = 0; ch < 3; ++ch) out[3 * i + ch] = std::max(raw[ch], T(0));
  });
}

template <typename T>
void sh_backward_impl(const at::Tensor& coeffs, const at::Tensor& dirs, int64_t degree, const at::Tensor& v_colors,
                      at::Tensor& v_coeffs) {
  const int64_t C = dirs.size(0), N = dirs.size(1), K = coeffs.size(1), used = (degree + 1) * (degree + 1);
  const T *cp = coeffs.data_ptr<T>(), *dp = dirs.data_ptr<T>(), *vp = v_colors.data_ptr<T>();
  T* out = v_coeffs.data_ptr<T>();
  parallel_gaussians(N, [&](int64_t n) {
    for (int64_t cam = 0; cam < C; ++cam) {
      const int64_t i = cam * N + n;
      T basis[16], raw[3];
      sh_basis(dp + 3 * i, degree, basis);
      sh_colour(cp + n * K * 3, basis, used, raw);
      for (int ch = 0; ch < 3; ++ch) {
        const T v = raw[ch] >= 0 ? vp[3 * i + ch] : T(0);  // clamp_min(raw, 0) passes gradient where raw >= 0
        for (int64_t k = 0; k < used; ++k) out[(n * K + k) * 3 + ch] += basis[k] * v;
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ compositing

// Integer pixel box [x0, x1) x [y0, y1) of a Gaussian's footprint, clipped to the image (as render/cpu.py does).
template <typename T>
struct Box {
  int64_t x0, y0, x1, y1;

  Box(const T* mean2d, const int32_t* radius, int64_t width, int64_t height) {
    x0 = std::max<int64_t>(0, static_cast<int64_t>(std::floor(mean2d[0] - T(radius[0]))));
    y0 = std::max<int64_t>(0, static_cast<int64_t>(std::floor(mean2d[1] - T(radius[1]))));
    x1 = std::min<int64_t>(width, static_cast<int64_t>(std::ceil(mean2d[0] + T(radius[0]))));
    y1 = std::min<int64_t>(height, static_cast<int64_t>(std::ceil(mean2d[1] + T(radius[1]))));
  }
};

// exp(x): float gets an inline, vectorisable version (range reduction by ln 2, degree-7 Taylor polynomial; within
// 2 ulp), double gets std::exp (exact gradchecks).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);  // 2^k stays a normal float
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2), 12582912 = 1.5 * 2^23
  const float r = (x - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;  // ln 2 in two parts
  const float poly =
      1 + r * (1 + r * (0.5f + r * (1 / 6.0f + r * (1 / 24.0f + r * (1 / 120.0f + r * (1 / 720.0f + r / 5040.0f))))));
  return poly * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);  // poly * 2^k
}
inline double fast_exp(double x) { return std::exp(x); }

// A projected Gaussian seen from one camera: centre, conic (a, b, c) and opacity.
template <typename T>
struct Splat {
  T mx, my, a, b, c, opacity, sigma_cut;

  Splat(const T* mean2d, const T* conic, T opacity)
      : mx(mean2d[0]), my(mean2d[1]), a(conic[0]), b(conic[1]), c(conic[2]), opacity(opacity),
        sigma_cut(std::log(opacity / T(kAlphaThreshold)) * T(1.001) + T(1e-3)) {}

  // Vertical offset from the centre to the centres of row py (py + 0.5).
  T dy(int64_t py) const { return T(py) + T(0.5) - my; }

  // Columns [x0, x1) of row py, within [lo, hi), outside which sigma > sigma_cut, i.e. alpha < 1/255 for sure:
  // the row's chord of that ellipse, widened by a pixel (the exact test runs on every pixel returned).
  void row_span(int64_t py, int64_t lo, int64_t hi, int64_t& x0, int64_t& x1) const {
    x0 = lo, x1 = hi;
    const T dy_ = dy(py), disc = 2 * a * sigma_cut - (a * c - b * b) * dy_ * dy_;
    if (!(a > 0)) return;
    if (!(disc >= 0)) {  // negative, or NaN from a degenerate conic: nothing on this row
      x1 = x0;
      return;
    }
    const T root = std::sqrt(disc), centre = mx - T(0.5) - b * dy_ / a;
    const T left = std::floor(centre - root / a) - 1, right = std::ceil(centre + root / a) + 2;
    if (left > T(lo)) x0 = std::min(hi, static_cast<int64_t>(std::min(left, T(hi))));  // clamp before casting
    if (right < T(hi)) x1 = std::max(x0, static_cast<int64_t>(std::max(right, T(x0))));
  }

  // For px = x0 + i of row py: falloff[i] = exp(-sigma) with sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, and
  // alpha[i] = min(0.999, opacity * falloff), or 0 where the pair is skipped (sigma < 0 or alpha < 1/255).
  // Branch-free with 32-bit indices, so that the compiler vectorises it (-fno-trapping-math lets it use selects).
  void row_alphas(int64_t py, int64_t x0, int64_t x1, T* __restrict alpha, T* __restrict falloff) const {
    const T dy_ = dy(py), half_c_dy2 = T(0.5) * c * dy_ * dy_, b_dy = b * dy_;
    const int32_t first = static_cast<int32_t>(x0), count = static_cast<int32_t>(x1 - x0);
#pragma omp simd
    for (int32_t i = 0; i < count; ++i) {
      const T dx_ = T(first + i) + T(0.5) - mx;
      const T sigma = T(0.5) * a * dx_ * dx_ + half_c_dy2 + b_dy * dx_;
      const T e = fast_exp(-sigma), value = std::min(T(kAlphaMax), opacity * e);
      falloff[i] = e;
      const T kept = sigma >= 0 ? value : T(0);
      alpha[i] = kept >= T(kAlphaThreshold) ? kept : T(0);
    }
  }
};

// The depth-ordered visible Gaussians of every band of every camera: band (cam, b) owns ids[offsets[cam * B + b] ..
// offsets[cam * B + b + 1]).
struct Bands {
  int64_t per_camera;
  at::Tensor offsets, ids;
};

template <typename T>
Bands make_bands(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths, int64_t width,
                 int64_t height) {
  const int64_t C = means2d.size(0), N = means2d.size(1), B = (height + kBandRows - 1) / kBandRows;
  const T *m2 = means2d.data_ptr<T>(), *dp = depths.data_ptr<T>();
  const int32_t* rp = radii.data_ptr<int32_t>();
  std::vector<int64_t> offsets(C * B + 1, 0);
  std::vector<std::vector<int32_t>> sorted(C);
  parallel_tasks(C, [&](int64_t cam) {
    std::vector<int32_t>& order = sorted[cam];
    for (int64_t n = 0; n < N; ++n)
      if (rp[2 * (cam * N + n)] > 0 && rp[2 * (cam * N + n) + 1] > 0) order.push_back(static_cast<int32_t>(n));
    std::stable_sort(order.begin(), order.end(), [&](int32_t i, int32_t j) { return dp[cam * N + i] < dp[cam * N + j]; });
    for (int32_t n : order) {
      const Box<T> box(m2 + 2 * (cam * N + n), rp + 2 * (cam * N + n), width, height);
      if (box.x1 <= box.x0 || box.y1 <= box.y0) continue;
      for (int64_t b = box.y0 / kBandRows; b <= (box.y1 - 1) / kBandRows; ++b) ++offsets[cam * B + b + 1];
    }
  });
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  at::Tensor ids = at::empty({offsets.back()}, at::kInt);
  int32_t* out = ids.data_ptr<int32_t>();
  parallel_tasks(C, [&](int64_t cam) {
    std::vector<int64_t> fill(offsets.begin() + cam * B, offsets.begin() + (cam + 1) * B);
    for (int32_t n : sorted[cam]) {
      const Box<T> box(m2 + 2 * (cam * N + n), rp + 2 * (cam * N + n), width, height);
      if (box.x1 <= box.x0 || box.y1 <= box.y0) continue;
      for (int64_t b = box.y0 / kBandRows; b <= (box.y1 - 1) / kBandRows; ++b) out[fill[b]++] = n;
    }
  });
  return {B, at::tensor(offsets, at::kLong), ids};
}

// Per-row buffers of one band's worker, one value per pixel of a row span.
template <typename T>
struct RowScratch {
  std::vector<T> alpha, falloff, weight, t_before, keep_inv, v_alpha;
  explicit RowScratch(int64_t width)
      : alpha(width), falloff(width), weight(width), t_before(width), keep_inv(width), v_alpha(width) {}
};

// Calls f(first pixel of the span within the band, px0, py, count) for each row py of a Gaussian's box inside band
// rows [y0, y1), after filling scratch.alpha/falloff for the span of that row where its alpha may reach 1/255.
template <typename T, typename F>
void for_splat_rows(const Splat<T>& splat, const Box<T>& box, int64_t y0, int64_t y1, int64_t width,
                    RowScratch<T>& scratch, const F& f) {
  for (int64_t py = std::max(box.y0, y0); py < std::min(box.y1, y1); ++py) {
    int64_t x0, x1;
    splat.row_span(py, box.x0, box.x1, x0, x1);
    if (x1 <= x0) continue;
    splat.row_alphas(py, x0, x1, scratch.alpha.data(), scratch.falloff.data());
    f((py - y0) * width + x0, x0, py, static_cast<int32_t>(x1 - x0));
  }
}

// One band of one camera: its rows, its first pixel in the [C,H,W] pixel array and its Gaussians.
struct Band {
  int64_t cam, y0, y1, pixel0, pixels, begin, end;

  Band(int64_t task, const Bands& bands, int64_t width, int64_t height) {
    const int64_t* offsets = bands.offsets.data_ptr<int64_t>();
    cam = task / bands.per_camera;
    y0 = (task % bands.per_camera) * kBandRows, y1 = std::min(height, y0 + kBandRows);
    pixel0 = cam * height * width + y0 * width, pixels = (y1 - y0) * width;
    begin = offsets[task], end = offsets[task + 1];
  }
};

// Row loops below are branch-free (selects, 32-bit indices) so that the compiler vectorises them; colours are kept
// in per-band planes [D][pixels] for contiguous access. A pixel's transmittance is stored negated once it is done
// (the next Gaussian would have brought it to 1e-4 or below).
template <typename T>
void rasterize_forward_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                            const at::Tensor& opacities, const at::Tensor& backgrounds, const at::Tensor& radii,
                            const Bands& bands, int64_t width, int64_t height, at::Tensor& image,
                            at::Tensor& transmittance, at::Tensor& last) {
  const int64_t N = means2d.size(1), D = colors.size(2);
  const T *m2 = means2d.data_ptr<T>(), *co = conics.data_ptr<T>(), *cp = colors.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();
  const T* bg = backgrounds.numel() ? backgrounds.data_ptr<T>() : nullptr;
  const int32_t *rp = radii.data_ptr<int32_t>(), *ids = bands.ids.data_ptr<int32_t>();
  T *img = image.data_ptr<T>(), *tp = transmittance.data_ptr<T>();
  int32_t* lp = last.data_ptr<int32_t>();
  parallel_tasks(bands.offsets.numel() - 1, [&](int64_t task) {
    const Band band(task, bands, width, height);
    T* trans = tp + band.pixel0;
    int32_t* last_px = lp + band.pixel0;
    std::fill(trans, trans + band.pixels, T(1));
    std::fill(last_px, last_px + band.pixels, -1);
    std::vector<T> planes(D * band.pixels, T(0));
    RowScratch<T> scratch(width);
    for (int64_t j = band.begin; j < band.end; ++j) {
      const int64_t g = band.cam * N + ids[j];
      const Splat<T> splat(m2 + 2 * g, co + 3 * g, op[ids[j]]);
      const T* colour = cp + g * D;
      const int32_t local = static_cast<int32_t>(j - band.begin);
      for_splat_rows(splat, Box<T>(m2 + 2 * g, rp + 2 * g, width, height), band.y0, band.y1, width, scratch,
                     [&](int64_t p0, int64_t, int64_t, int32_t count) {
                       const T *__restrict alpha = scratch.alpha.data();
                       T *__restrict weight = scratch.weight.data(), *__restrict t = trans + p0;
                       int32_t* __restrict last_row = last_px + p0;
#pragma omp simd
                       for (int32_t i = 0; i < count; ++i) {
                         const T live = alpha[i] > 0 ? t[i] : T(0);  // > 0 iff the pair counts and the pixel is not done
                         const T next = live * (1 - alpha[i]);
                         const bool add = next > T(kTransmittanceMin);
                         weight[i] = add ? alpha[i] * live : T(0);
                         last_row[i] = add ? local : last_row[i];
                         t[i] = add ? next : (live > 0 ? -live : t[i]);
                       }
                       for (int64_t d = 0; d < D; ++d) {
                         T* __restrict plane = planes.data() + d * band.pixels + p0;
                         const T c = colour[d];
#pragma omp simd
                         for (int32_t i = 0; i < count; ++i) plane[i] += weight[i] * c;
                       }
                     });
    }
    T* out = img + band.pixel0 * D;
    for (int64_t p = 0; p < band.pixels; ++p) {
      trans[p] = std::abs(trans[p]);
      for (int64_t d = 0; d < D; ++d) out[p * D + d] = planes[d * band.pixels + p] + (bg ? trans[p] * bg[band.cam * D + d] : T(0));
    }
  });
}

// Per (band, Gaussian) gradient record: means2d (2), conic (3), opacity (1), colour (D).
constexpr int64_t kRecordFixed = 6;

template <typename T>
void rasterize_backward_impl(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                             const at::Tensor& opacities, const at::Tensor& backgrounds, const at::Tensor& radii,
                             const Bands& bands, const at::Tensor& transmittance, const at::Tensor& last,
                             int64_t width, int64_t height, const at::Tensor& v_image, const at::Tensor& v_alpha,
                             at::Tensor& v_means2d, at::Tensor& v_conics, at::Tensor& v_colors,
                             at::Tensor& v_opacities, at::Tensor& v_backgrounds) {
  const int64_t N = means2d.size(1), D = colors.size(2), stride = kRecordFixed + D;
  const int64_t tasks = bands.offsets.numel() - 1;
  const T *m2 = means2d.data_ptr<T>(), *co = conics.data_ptr<T>(), *cp = colors.data_ptr<T>();
  const T* op = opacities.data_ptr<T>();
  const T* bg = backgrounds.numel() ? backgrounds.data_ptr<T>() : nullptr;
  const T *tp = transmittance.data_ptr<T>(), *vi = v_image.data_ptr<T>(), *va = v_alpha.data_ptr<T>();
  const int32_t *rp = radii.data_ptr<int32_t>(), *ids = bands.ids.data_ptr<int32_t>(), *lp = last.data_ptr<int32_t>();
  std::vector<T> records(bands.ids.numel() * stride, T(0)), bg_records(tasks * D, T(0));
  parallel_tasks(tasks, [&](int64_t task) {
    const Band band(task, bands, width, height);
    const int64_t P = band.pixels;
    const T* t_final = tp + band.pixel0;
    const int32_t* last_px = lp + band.pixel0;
    const T* v_a = va + band.pixel0;
    // per pixel: transmittance in front of the current Gaussian, dL/dimage and the colour behind (planes [D][P])
    std::vector<T> trans(t_final, t_final + P), v_planes(D * P), behind(D * P, T(0)), v_alpha_final(P);
    for (int64_t p = 0; p < P; ++p) {
      v_alpha_final[p] = v_a[p] * t_final[p];
      for (int64_t d = 0; d < D; ++d) {
        const T v = vi[(band.pixel0 + p) * D + d];
        v_planes[d * P + p] = v;
        if (bg) behind[d * P + p] = t_final[p] * bg[band.cam * D + d];
        bg_records[task * D + d] += v * t_final[p];
      }
    }
    RowScratch<T> scratch(width);
    for (int64_t j = band.end - 1; j >= band.begin; --j) {
      const int64_t g = band.cam * N + ids[j];
      const Splat<T> splat(m2 + 2 * g, co + 3 * g, op[ids[j]]);
      const T* colour = cp + g * D;
      const int32_t local = static_cast<int32_t>(j - band.begin);
      T* rec = records.data() + j * stride;
      for_splat_rows(splat, Box<T>(m2 + 2 * g, rp + 2 * g, width, height), band.y0, band.y1, width, scratch,
                     [&](int64_t p0, int64_t x0, int64_t py, int32_t count) {
                       const T *__restrict alpha = scratch.alpha.data(), *__restrict falloff = scratch.falloff.data();
                       T *__restrict weight = scratch.weight.data(), *__restrict t_before = scratch.t_before.data();
                       T *__restrict keep_inv = scratch.keep_inv.data(), *__restrict v_alpha = scratch.v_alpha.data();
                       const int32_t* __restrict last_row = last_px + p0;
                       T* __restrict t = trans.data() + p0;
                       const T* __restrict v_final = v_alpha_final.data() + p0;
#pragma omp simd
                       for (int32_t i = 0; i < count; ++i) {  // the pair's alpha if it was composited, else 0
                         const T a = local <= last_row[i] ? alpha[i] : T(0);
                         keep_inv[i] = 1 / (1 - a);
                         t_before[i] = t[i] * keep_inv[i];
                         weight[i] = a * t_before[i];
                         v_alpha[i] = v_final[i] * keep_inv[i];
                         t[i] = t_before[i];
                       }
                       for (int64_t d = 0; d < D; ++d) {
                         const T c = colour[d];
                         const T* __restrict v = v_planes.data() + d * P + p0;
                         T* __restrict back = behind.data() + d * P + p0;
                         T v_colour = 0;
#pragma omp simd reduction(+ : v_colour)
                         for (int32_t i = 0; i < count; ++i) {
                           v_colour += weight[i] * v[i];
                           v_alpha[i] += v[i] * (c * t_before[i] - back[i] * keep_inv[i]);
                           back[i] += weight[i] * c;
                         }
                         rec[kRecordFixed + d] += v_colour;
                       }
                       const T a_ = splat.a, b_ = splat.b, c_ = splat.c, dy = splat.dy(py), mx = splat.mx;
                       const int32_t first = static_cast<int32_t>(x0);
                       T v_mx = 0, v_my = 0, v_ca = 0, v_cb = 0, v_cc = 0, v_op = 0;
#pragma omp simd reduction(+ : v_mx, v_my, v_ca, v_cb, v_cc, v_op)
                       for (int32_t i = 0; i < count; ++i) {
                         // alpha = opacity * falloff, unless composited-out (weight 0) or clamped at 0.999
                         const bool free = splat.opacity * falloff[i] <= T(kAlphaMax);
                         const T v = weight[i] > 0 ? (free ? v_alpha[i] : T(0)) : T(0);
                         const T v_sigma = -alpha[i] * v, dx = T(first + i) + T(0.5) - mx;  // as in row_alphas
                         v_mx -= (a_ * dx + b_ * dy) * v_sigma;
                         v_my -= (b_ * dx + c_ * dy) * v_sigma;
                         v_ca += T(0.5) * dx * dx * v_sigma;
                         v_cb += dx * dy * v_sigma;
                         v_cc += T(0.5) * dy * dy * v_sigma;
                         v_op += v != 0 ? falloff[i] * v : T(0);  // falloff may be inf where v is 0
                       }
                       rec[0] += v_mx, rec[1] += v_my, rec[2] += v_ca, rec[3] += v_cb, rec[4] += v_cc, rec[5] += v_op;
                     });
    }
  });
  // Sum the records over bands in band order: a fixed order, whatever the thread count.
  T *vm = v_means2d.data_ptr<T>(), *vc = v_conics.data_ptr<T>(), *vcol = v_colors.data_ptr<T>();
  T *vo = v_opacities.data_ptr<T>(), *vb = v_backgrounds.data_ptr<T>();
  for (int64_t task = 0; task < tasks; ++task) {
    const Band band(task, bands, width, height);
    for (int64_t j = band.begin; j < band.end; ++j) {
      const int64_t g = band.cam * N + ids[j];
      const T* rec = records.data() + j * stride;
      vm[2 * g] += rec[0], vm[2 * g + 1] += rec[1];
      vc[3 * g] += rec[2], vc[3 * g + 1] += rec[3], vc[3 * g + 2] += rec[4];
      vo[ids[j]] += rec[5];
      for (int64_t d = 0; d < D; ++d) vcol[g * D + d] += rec[kRecordFixed + d];
    }
    if (bg)
      for (int64_t d = 0; d < D; ++d) vb[band.cam * D + d] += bg_records[task * D + d];
  }
}

// ------------------------------------------------------------------------------------------------ bindings

void check_all(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors, at::ScalarType dtype) {
  for (const auto& [tensor, name] : tensors) check_input(*tensor, name, dtype);
}

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                        const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                                        int64_t width, int64_t height, double near_plane, double far_plane,
                                        double eps2d) {
  check_all({{&means, "means"}, {&quats, "quats"}, {&scales, "scales"}, {&opacities, "opacities"},
             {&viewmats, "viewmats"}, {&Ks, "Ks"}}, means.scalar_type());
  const int64_t C = viewmats.size(0), N = means.size(0);
  auto means2d = at::empty({C, N, 2}, means.options()), conics = at::empty({C, N, 3}, means.options());
  auto depths = at::empty({C, N}, means.options()), radii = at::empty({C, N, 2}, means.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    project_forward_impl<scalar_t>(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
                                   far_plane, eps2d, means2d, conics, depths, radii);
  });
  return {means2d, conics, depths, radii};
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                         const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width,
                                         int64_t height, double eps2d, const at::Tensor& v_means2d,
                                         const at::Tensor& v_conics, const at::Tensor& v_depths) {
  check_all({{&means, "means"}, {&quats, "quats"}, {&scales, "scales"}, {&viewmats, "viewmats"}, {&Ks, "Ks"},
             {&v_means2d, "v_means2d"}, {&v_conics, "v_conics"}, {&v_depths, "v_depths"}}, means.scalar_type());
  auto v_means = at::empty_like(means), v_quats = at::empty_like(quats), v_scales = at::empty_like(scales);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    project_backward_impl<scalar_t>(means, quats, scales, viewmats, Ks, width, height, eps2d, v_means2d, v_conics,
                                    v_depths, v_means, v_quats, v_scales);
  });
  return {v_means, v_quats, v_scales};
}

at::Tensor sh_forward(const at::Tensor& coeffs, const at::Tensor& dirs, int64_t degree) {
  check_all({{&coeffs, "coeffs"}, {&dirs, "dirs"}}, coeffs.scalar_type());
  TORCH_CHECK(degree >= 0 && degree <= 3 && (degree + 1) * (degree + 1) <= coeffs.size(1), "bad SH degree ", degree);
  auto colors = at::empty({dirs.size(0), dirs.size(1), 3}, coeffs.options());
  AT_DISPATCH_FLOATING_TYPES(coeffs.scalar_type(), "sh_forward", [&] {
    sh_forward_impl<scalar_t>(coeffs, dirs, degree, colors);
  });
  return colors;
}

at::Tensor sh_backward(const at::Tensor& coeffs, const at::Tensor& dirs, int64_t degree, const at::Tensor& v_colors) {
  check_all({{&coeffs, "coeffs"}, {&dirs, "dirs"}, {&v_colors, "v_colors"}}, coeffs.scalar_type());
  auto v_coeffs = at::zeros_like(coeffs);
  AT_DISPATCH_FLOATING_TYPES(coeffs.scalar_type(), "sh_backward", [&] {
    sh_backward_impl<scalar_t>(coeffs, dirs, degree, v_colors, v_coeffs);
  });
  return v_coeffs;
}

std::vector<at::Tensor> rasterize_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& colors, const at::Tensor& opacities,
                                          const at::Tensor& backgrounds, const at::Tensor& radii,
                                          const at::Tensor& depths, int64_t width, int64_t height) {
  check_all({{&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"}, {&opacities, "opacities"},
             {&backgrounds, "backgrounds"}, {&depths, "depths"}}, means2d.scalar_type());
  check_input(radii, "radii", at::kInt);
  const int64_t C = means2d.size(0), D = colors.size(2);
  auto image = at::zeros({C, height, width, D}, means2d.options());
  auto transmittance = at::empty({C, height, width}, means2d.options());
  auto last = at::empty({C, height, width}, radii.options());
  Bands bands;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward", [&] {
    bands = make_bands<scalar_t>(means2d, radii, depths, width, height);
    rasterize_forward_impl<scalar_t>(means2d, conics, colors, opacities, backgrounds, radii, bands, width, height,
                                     image, transmittance, last);
  });
  return {image, transmittance, last, bands.offsets, bands.ids};
}

std::vector<at::Tensor> rasterize_backward(const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& colors, const at::Tensor& opacities,
                                           const at::Tensor& backgrounds, const at::Tensor& radii,
                                           const at::Tensor& transmittance, const at::Tensor& last,
                                           const at::Tensor& band_offsets, const at::Tensor& band_ids, int64_t width,
                                           int64_t height, const at::Tensor& v_image, const at::Tensor& v_alpha) {
  check_all({{&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"}, {&opacities, "opacities"},
             {&backgrounds, "backgrounds"}, {&transmittance, "transmittance"}, {&v_image, "v_image"},
             {&v_alpha, "v_alpha"}}, means2d.scalar_type());
  const Bands bands{(height + kBandRows - 1) / kBandRows, band_offsets, band_ids};
  auto v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics), v_colors = at::zeros_like(colors);
  auto v_opacities = at::zeros_like(opacities), v_backgrounds = at::zeros_like(backgrounds);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_backward", [&] {
    rasterize_backward_impl<scalar_t>(means2d, conics, colors, opacities, backgrounds, radii, bands, transmittance,
                                      last, width, height, v_image, v_alpha, v_means2d, v_conics, v_colors,
                                      v_opacities, v_backgrounds);
  });
  return {v_means2d, v_conics, v_colors, v_opacities, v_backgrounds};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &project_forward, "EWA projection: means2d, conics, depths, radii [C,N,...]");
  m.def("project_backward", &project_backward, "gradients of means, quats, scales from those of the projection");
  m.def("sh_forward", &sh_forward, "colours [C,N,3] from SH coefficients [N,K,3] along directions [C,N,3]");
  m.def("sh_backward", &sh_backward, "gradient of the SH coefficients");
  m.def("rasterize_forward", &rasterize_forward, "image, transmittance, last contributor, band lists");
  m.def("rasterize_backward", &rasterize_backward, "gradients of means2d, conics, colours, opacities, backgrounds");
}
