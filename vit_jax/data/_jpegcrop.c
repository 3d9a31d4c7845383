/* Decodes only a window of a JPEG, at a DCT scale: libjpeg-turbo's jpeg_crop_scanline + jpeg_skip_scanlines.
 *
 * The binding the training crop needs and no Python JPEG package exposes (simplejpeg, PIL, OpenCV and
 * PyTurboJPEG decode whole images; TensorFlow's decode_and_crop_jpeg does this, in TensorFlow). Rows above the
 * window are entropy-decoded only (no IDCT, upsampling or colour conversion), rows below it are never read,
 * and only the iMCU columns that hold the window are transformed. Options are tf.io.decode_jpeg's defaults:
 * fast integer IDCT, fancy upsampling. Any libjpeg warning (damaged data) is an error, so the caller can hand
 * the file to a decoder that names it.
 *
 *   decode(data, denom, left, top, width, height) -> (pixels: bytes, x0: int, columns: int)
 *
 * decodes at scale 1/denom (1, 2, 4 or 8) the window [left, left + width) x [top, top + height) given in
 * pixels of the scaled image. `pixels` holds height x columns x 3 RGB bytes whose columns start at scaled
 * column x0 <= left (the window widened to iMCU boundaries); the window is columns left - x0 ... of it.
 * The GIL is released while rows are decoded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>

#include <jpeglib.h>

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} ErrorManager;

static void on_error(j_common_ptr info) {
  ErrorManager *err = (ErrorManager *)info->err;
  (*info->err->format_message)(info, err->message);
  longjmp(err->jump, 1);
}

static void on_message(j_common_ptr info, int level) {
  if (level < 0) on_error(info); /* A warning: corrupt data, which this decoder does not paper over. */
}

static PyObject *decode(PyObject *self, PyObject *args) {
  Py_buffer data;
  int denom, left, top, width, height;
  if (!PyArg_ParseTuple(args, "y*iiiii", &data, &denom, &left, &top, &width, &height)) return NULL;

  struct jpeg_decompress_struct info;
  ErrorManager err;
  PyObject *volatile pixels = NULL;
  JDIMENSION x0 = 0, columns = 0;
  int failed = 0;
  info.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.message[0] = '\0';
  jpeg_create_decompress(&info);
  if (setjmp(err.jump)) {
    failed = 1;
    goto done;
  }
  jpeg_mem_src(&info, (const unsigned char *)data.buf, (unsigned long)data.len);
  jpeg_read_header(&info, TRUE);
  info.out_color_space = JCS_RGB;
  info.dct_method = JDCT_IFAST;
  info.do_fancy_upsampling = TRUE;
  info.scale_num = 1;
  info.scale_denom = (unsigned int)denom;
  jpeg_start_decompress(&info);
  if (denom < 1 || left < 0 || top < 0 || width < 1 || height < 1 ||
      (JDIMENSION)left + (JDIMENSION)width > info.output_width ||
      (JDIMENSION)top + (JDIMENSION)height > info.output_height) {
    snprintf(err.message, sizeof(err.message), "window %dx%d+%d+%d outside the %ux%u image at 1/%d", width,
             height, left, top, info.output_width, info.output_height, denom);
    failed = 1;
    goto done;
  }
  x0 = (JDIMENSION)left;
  columns = (JDIMENSION)width;
  jpeg_crop_scanline(&info, &x0, &columns);
  pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)height * columns * 3);
  if (pixels == NULL) goto done;
  {
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pixels);
    const size_t stride = (size_t)columns * 3;
    const JDIMENSION end = (JDIMENSION)(top + height);
    PyThreadState *state = PyEval_SaveThread();
    if (setjmp(err.jump)) {
      PyEval_RestoreThread(state);
      failed = 1;
      goto done;
    }
    if (top > 0) jpeg_skip_scanlines(&info, (JDIMENSION)top);
    while (info.output_scanline < end) {
      JSAMPROW rows[4];
      JDIMENSION n = end - info.output_scanline, i;
      if (n > 4) n = 4;
      for (i = 0; i < n; i++) rows[i] = out + (size_t)(info.output_scanline - top + i) * stride;
      jpeg_read_scanlines(&info, rows, n);
    }
    PyEval_RestoreThread(state);
  }

done:
  jpeg_destroy_decompress(&info); /* Also abandons the rows below the window. */
  PyBuffer_Release(&data);
  if (failed) {
    Py_XDECREF(pixels);
    PyErr_Format(PyExc_ValueError, "JPEG window decode failed: %s", err.message);
    return NULL;
  }
  if (pixels == NULL) return NULL;
  return Py_BuildValue("(NII)", pixels, (unsigned int)x0, (unsigned int)columns);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, denom, left, top, width, height) -> (pixels, x0, columns): see the module source."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "Window (crop) JPEG decode with libjpeg-turbo.", -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
