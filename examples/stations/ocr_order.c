/*
 * The stations example's `ocr` item stage: reads the order id written on a
 * camera frame ("ORDER 1042") with tesseract's C API.
 *
 * Input: one frame as an image leptonica can decode (the camera sends JPEG).
 * Output: an empty payload (the spool keeps the camera's bytes) and
 *     meta {"order_id":"1042","ocr_text":"ORDER 1042","ocr_ms":85.2}
 * or, when no id is written (the empty counter between orders, a frame too
 * blurred to read), meta without "order_id": baton then leaves the frame
 * out of every session (missing_key: ignore).
 *
 * The frame is turned to gray and, when it is mostly dark (light text on a
 * dark counter), inverted: tesseract reads dark text on light best.  The
 * model is loaded once, in init.  Environment: OCR_LANG (default "eng"),
 * OMP_THREAD_LIMIT=1 advised (one replica, one core).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <leptonica/allheaders.h>
#include <tesseract/capi.h>

#include "baton_worker.h"

struct ocr {
	TessBaseAPI *api;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int init(void *user)
{
	struct ocr *o = user;
	const char *lang = getenv("OCR_LANG");
	if (!lang || !*lang)
		lang = "eng";
	o->api = TessBaseAPICreate();
	if (!o->api)
		return -1;
	if (TessBaseAPIInit3(o->api, NULL, lang) != 0) {
		fprintf(stderr, "ocr_order: cannot load tesseract language '%s' "
				"(Debian: tesseract-ocr-%s)\n", lang, lang);
		return -1;
	}
	/* Text anywhere on the frame, in no particular layout. */
	TessBaseAPISetPageSegMode(o->api, PSM_SPARSE_TEXT);
	TessBaseAPISetVariable(o->api, "tessedit_char_whitelist",
			       "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
	fprintf(stderr, "ocr_order: tesseract %s, language %s\n", TessVersion(), lang);
	return 0;
}

/*
 * The id after the word ORDER in text: its digits (at most 31), written to
 * id.  Tesseract sometimes reads O as 0 or D as 0 in the word, so the word
 * is matched loosely ("0RDER", "ORDFR"), the digits strictly.
 */
static int find_order_id(const char *text, char *id, size_t size)
{
	for (const char *p = text; *p; p++) {
		static const char word[] = "ORDER";
		int miss = 0;
		size_t k;
		for (k = 0; k < 5 && p[k]; k++)
			miss += toupper((unsigned char)p[k]) != word[k] &&
				!(word[k] == 'O' && p[k] == '0');
		if (k < 5 || miss > 1)
			continue;
		const char *d = p + 5;
		while (*d == ' ' || *d == ':' || *d == '#')
			d++;
		size_t n = 0;
		while (isdigit((unsigned char)d[n]) && n + 1 < size && n < 31)
			n++;
		if (n >= 2 && !isdigit((unsigned char)d[n])) {
			memcpy(id, d, n);
			id[n] = '\0';
			return 0;
		}
	}
	return -1;
}

/* Tesseract's text on one line, single-spaced, in place. */
static void one_line(char *s)
{
	char *w = s;
	int space = 0;
	for (const char *r = s; *r; r++) {
		if (isspace((unsigned char)*r)) {
			space = w != s;
			continue;
		}
		if (space)
			*w++ = ' ';
		space = 0;
		*w++ = *r;
	}
	*w = '\0';
}

static int handle(void *user, struct baton_request *req)
{
	struct ocr *o = user;
	double began = now_ms();
	size_t len;
	const unsigned char *data = baton_request_data(req, &len);
	PIX *pix = pixReadMem(data, len);
	if (!pix) {
		char why[128];
		snprintf(why, sizeof(why), "the frame (%zu bytes) is not an image "
			 "leptonica can decode", len);
		return baton_fail(req, why, 0);
	}
	PIX *gray = pixConvertTo8(pix, 0);
	pixDestroy(&pix);
	if (!gray)
		return baton_fail(req, "cannot convert the frame to gray", 1);
	l_float32 mean = 255;
	pixGetAverageMasked(gray, NULL, 0, 0, 1, L_MEAN_ABSVAL, &mean);
	if (mean < 128)
		pixInvert(gray, gray);
	/* Black and white: the sensor noise of an empty counter is otherwise
	 * read as a page of specks, several times slower than a frame with
	 * text on it. */
	PIX *bw = pixThresholdToBinary(gray, 128);
	pixDestroy(&gray);
	if (!bw)
		return baton_fail(req, "cannot threshold the frame", 1);
	gray = bw;
	pixSetResolution(gray, 300, 300); /* large text: no guessing, no warning */

	TessBaseAPISetImage2(o->api, gray);
	char *text = TessBaseAPIGetUTF8Text(o->api);
	TessBaseAPIClear(o->api);
	pixDestroy(&gray);
	if (!text)
		return baton_fail(req, "tesseract failed on the frame", 1);
	one_line(text);

	char id[32];
	json_t *meta = json_object();
	if (find_order_id(text, id, sizeof(id)) == 0)
		json_object_set_new(meta, "order_id", json_string(id));
	/* Kept short: it rides along in every frame's meta.  The whitelist
	 * makes it ASCII, so the cut cannot split a character. */
	if (strlen(text) > 200)
		text[200] = '\0';
	json_t *jt = json_string(text);
	TessDeleteText(text);
	if (!jt)
		jt = json_string("");
	json_object_set_new(meta, "ocr_text", jt);
	json_object_set_new(meta, "ocr_ms", json_real((double)(long long)((now_ms() - began) * 10) / 10));
	char *mtext = json_dumps(meta, JSON_COMPACT);
	json_decref(meta);
	if (!mtext)
		return baton_fail(req, "out of memory", 1);
	int r = baton_respond(req, "", 0, mtext);
	free(mtext);
	return r;
}

static void stop(void *user)
{
	struct ocr *o = user;
	if (o->api) {
		TessBaseAPIEnd(o->api);
		TessBaseAPIDelete(o->api);
		o->api = NULL;
	}
}

int main(void)
{
	struct ocr o = {0};
	struct baton_worker_ops ops = {.init = init, .handle = handle, .stop = stop};
	int r = baton_worker_run(&ops, &o);
	stop(&o);
	return r ? 1 : 0;
}
