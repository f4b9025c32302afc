/*
 * kpgen_runtime.h - the kpgen int8 runtime: every kernel the emitted model code calls.
 */
#ifndef KPGEN_RUNTIME_H
#define KPGEN_RUNTIME_H

#include "kp_activation_s16.h"
#include "kp_common.h"
#include "kp_fastgrnn_step_s8.h"
#include "kp_fastrnn_step_s8.h"
#include "kp_fc_relu_s8.h"
#include "kp_fc_s8.h"
#include "kp_gru_step_s8.h"
#include "kp_lstm_step_s8.h"
#include "kp_matvec_s8.h"
#include "kp_pool_s8.h"
#include "kp_rnn_step_s8.h"

#endif /* KPGEN_RUNTIME_H */
