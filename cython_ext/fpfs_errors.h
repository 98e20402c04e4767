/* Result codes of every fpfs decoder (fpfs_decode.h, fpfs_rans32.h, fpfs_expmant.h): FPFS_OK,
 * or a negative FPFS_ERR_* saying what was wrong with the (hostile) input. */
#ifndef FPFS_ERRORS_H
#define FPFS_ERRORS_H

#define FPFS_OK 0
#define FPFS_ERR_TABLE (-1)      /* malformed frequency table */
#define FPFS_ERR_TRUNCATED (-2)  /* stream ends before all symbols are decoded */
#define FPFS_ERR_TRAILING (-3)   /* bytes left over after the last symbol */
#define FPFS_ERR_STATE (-4)      /* a lane did not return to its initial state */
#define FPFS_ERR_LAYOUT (-5)     /* plane layout / lengths inconsistent */

#endif /* FPFS_ERRORS_H */
