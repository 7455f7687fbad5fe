/* ctl_model.h: `twinctl model`, the command-line face of twins/models (ctl_model.c). */
#ifndef CTL_MODEL_H
#define CTL_MODEL_H

/* Runs `twinctl model ARGS`: argv[0..argc) are the words after "model" ("info FILE",
 * "predict FILE [--proba]"). Prints to stdout and stderr. Returns the exit code: 0 done, 1 a
 * model that does not load or a row that can't be predicted, 2 usage or I/O error. */
int ctl_model_main(int argc, char **argv);

#endif
