/*
 * The documents example's `ocr` stage: reads the text of each region the
 * `detect` stage found, with tesseract's C API.
 *
 * Input (the detect stage's output): one JSON line
 *     {"width":W,"height":H,"regions":[[x,y,w,h],...],"source":"png","detect_ms":12.3}
 * then the page as an image leptonica can decode (detect sends a grayscale PNG).
 *
 * Output: application/json
 *     {"regions":[{"box":[x,y,w,h],"text":"PUMP P-101","confidence":93},...],
 *      "text":"PUMP P-101\n...", "width":W, "height":H, "source":"png",
 *      "timings":{"detect_ms":12.3,"ocr_ms":410.2}}
 * Regions in which tesseract reads no letter or digit (arrowheads, specks)
 * are left out.
 *
 * The point of a persistent worker: loading tesseract's model takes longer
 * than reading a page, so it is loaded once, in init(), and every request
 * reuses it.  Environment: OCR_LANG (default "eng"); TESSDATA_PREFIX as
 * tesseract reads it; OMP_THREAD_LIMIT=1 is advised (one replica, one core:
 * scale with replicas, not threads).
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <leptonica/allheaders.h>
#include <tesseract/capi.h>

#include "baton_worker.h"

#define OUT_META "{\"content_type\":\"application/json\",\"ext\":\".json\"}"

/* detect's PNG carries no resolution; tesseract would guess 70 dpi and say so
 * on stderr for every page.  150 dpi is what detect rasterises PDFs at. */
#define DEFAULT_DPI 150

struct ocr {
	TessBaseAPI *api;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Milliseconds to one decimal: finer is noise. */
static double tenths(double ms)
{
	return (double)(long long)(ms * 10 + 0.5) / 10;
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
	/* NULL datapath: tesseract's own default, or TESSDATA_PREFIX. */
	if (TessBaseAPIInit3(o->api, NULL, lang) != 0) {
		fprintf(stderr, "ocr: cannot load tesseract language '%s' "
				"(Debian: tesseract-ocr-%s)\n", lang, lang);
		return -1;
	}
	/* detect hands over single text lines. */
	TessBaseAPISetPageSegMode(o->api, PSM_SINGLE_LINE);
	fprintf(stderr, "ocr: tesseract %s, language %s\n", TessVersion(), lang);
	if (!getenv("OMP_THREAD_LIMIT"))
		fprintf(stderr, "ocr: OMP_THREAD_LIMIT is not set: tesseract's OpenMP "
				"threads may make it several times slower; set it to 1 "
				"in the stage's env\n");
	return 0;
}

/* Tesseract ends lines with '\n' and may split a wide line in two: make
 * each region one line of single-spaced text, in place. */
static void tidy(char *s)
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

static json_int_t clamp(json_int_t v, json_int_t lo, json_int_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Whether s holds a letter or digit: what tesseract reads in an arrowhead
 * or a speck is punctuation ('>', '|', '_'), not worth a region.  Bytes
 * above 0x7f are non-ASCII UTF-8, letters of other scripts. */
static int has_word(const char *s)
{
	for (; *s; s++)
		if (isalnum((unsigned char)*s) || (unsigned char)*s >= 0x80)
			return 1;
	return 0;
}

/* A number (integer or real) from the first of two objects that has it,
 * else JSON null.  Either object may be NULL. */
static json_t *number_from(json_t *a, json_t *b, const char *key)
{
	json_t *v = a ? json_object_get(a, key) : NULL;
	if (!json_is_number(v))
		v = b ? json_object_get(b, key) : NULL;
	return json_is_number(v) ? json_real(json_number_value(v)) : json_null();
}

/*
 * Reads one region into out.  Boxes are clipped to the page; a box that is
 * not four integers is the request's fault (-1), one outside the page is
 * skipped (0).
 */
static int read_region(struct ocr *o, json_t *box, int pw, int ph, json_t *out)
{
	json_int_t v[4];
	if (!json_is_array(box) || json_array_size(box) != 4)
		return -1;
	for (size_t i = 0; i < 4; i++) {
		json_t *n = json_array_get(box, i);
		/* Bounded so that x + w below cannot overflow. */
		if (!json_is_integer(n) || json_integer_value(n) < INT_MIN ||
		    json_integer_value(n) > INT_MAX)
			return -1;
		v[i] = json_integer_value(n);
	}
	json_int_t x0 = clamp(v[0], 0, pw), y0 = clamp(v[1], 0, ph);
	json_int_t x1 = clamp(v[0] + v[2], 0, pw), y1 = clamp(v[1] + v[3], 0, ph);
	if (x1 - x0 < 2 || y1 - y0 < 2)
		return 0;

	/* detect's boxes hug the ink; tesseract reads a line far better with
	 * white space around it (about half a line height; measured on the
	 * samples: 93.6% of words without, 97% with). */
	json_int_t m = (y1 - y0) / 2 > 4 ? (y1 - y0) / 2 : 4;
	json_int_t l = clamp(x0 - m, 0, pw), t = clamp(y0 - m, 0, ph);
	json_int_t r = clamp(x1 + m, 0, pw), b = clamp(y1 + m, 0, ph);
	TessBaseAPISetRectangle(o->api, (int)l, (int)t, (int)(r - l), (int)(b - t));
	char *text = TessBaseAPIGetUTF8Text(o->api);
	if (!text)
		return 0;
	tidy(text);
	if (has_word(text)) {
		/* MeanTextConf reuses the recognition GetUTF8Text just ran. */
		int conf = TessBaseAPIMeanTextConf(o->api);
		json_array_append_new(out, json_pack("{s:[IIII],s:s,s:i}", "box", x0, y0,
						     x1 - x0, y1 - y0, "text", text,
						     "confidence", conf));
	}
	TessDeleteText(text);
	return 0;
}

/* Joins the regions' texts, one per line. */
static char *join_text(json_t *regions)
{
	size_t n = 1, i;
	json_t *r;
	json_array_foreach(regions, i, r)
		n += strlen(json_string_value(json_object_get(r, "text"))) + 1;
	char *all = malloc(n), *p = all;
	if (!all)
		return NULL;
	json_array_foreach(regions, i, r) {
		const char *t = json_string_value(json_object_get(r, "text"));
		size_t l = strlen(t);
		if (p != all)
			*p++ = '\n';
		memcpy(p, t, l);
		p += l;
	}
	*p = '\0';
	return all;
}

/* The request's metadata as an object; NULL if unreadable. */
static json_t *request_meta(struct baton_request *req)
{
	const char *text = baton_request_meta(req);
	return text ? json_loads(text, 0, NULL) : NULL;
}

static int handle(void *user, struct baton_request *req)
{
	struct ocr *o = user;
	double began = now_ms();
	size_t len;
	const char *data = baton_request_data(req, &len);
	const char *nl = memchr(data, '\n', len);
	char why[256];

	if (!nl)
		return baton_fail(req, "expected a JSON line then a page image "
				       "(the detect stage's output)", 0);
	json_error_t jerr;
	json_t *hdr = json_loadb(data, (size_t)(nl - data), 0, &jerr);
	json_t *boxes = hdr ? json_object_get(hdr, "regions") : NULL;
	if (!json_is_object(hdr) || !json_is_array(boxes)) {
		snprintf(why, sizeof(why), "header line is not {\"regions\":[...],...}: %s",
			 hdr ? "no regions array" : jerr.text);
		json_decref(hdr);
		return baton_fail(req, why, 0);
	}

	size_t img_len = len - (size_t)(nl + 1 - data);
	PIX *pix = pixReadMem((const l_uint8 *)(nl + 1), img_len);
	if (!pix) {
		snprintf(why, sizeof(why), "page image (%zu bytes after the header) "
			 "could not be decoded", img_len);
		json_decref(hdr);
		return baton_fail(req, why, 0);
	}
	if (pixGetXRes(pix) <= 0 || pixGetYRes(pix) <= 0)
		pixSetResolution(pix, DEFAULT_DPI, DEFAULT_DPI);
	int pw = pixGetWidth(pix), ph = pixGetHeight(pix);

	/* One SetImage per page: tesseract thresholds the page once and each
	 * SetRectangle only picks a window of it. */
	TessBaseAPISetImage2(o->api, pix);
	json_t *regions = json_array();
	size_t i;
	json_t *box;
	int bad = 0;
	json_array_foreach(boxes, i, box) {
		if (read_region(o, box, pw, ph, regions) < 0) {
			bad = 1;
			break;
		}
	}
	/* Drops tesseract's copy of the page and its results, keeps the model. */
	TessBaseAPIClear(o->api);
	pixDestroy(&pix);
	if (bad) {
		snprintf(why, sizeof(why), "region %zu is not [x,y,w,h] integers", i);
		json_decref(regions);
		json_decref(hdr);
		return baton_fail(req, why, 0);
	}

	char *all = join_text(regions);
	json_t *meta = request_meta(req);
	json_t *out = all ? json_pack("{s:o,s:s,s:i,s:i,s:O?,s:{s:o,s:f}}",
				      "regions", regions, "text", all,
				      "width", pw, "height", ph,
				      "source", json_object_get(hdr, "source"),
				      "timings", "detect_ms", number_from(meta, hdr, "detect_ms"),
				      "ocr_ms", tenths(now_ms() - began))
			  : NULL;
	if (!all)
		json_decref(regions);   /* json_pack steals it only when called */
	free(all);
	json_decref(meta);
	json_decref(hdr);
	char *body = out ? json_dumps(out, JSON_COMPACT) : NULL;
	json_decref(out);
	if (!body)
		return baton_fail(req, "out of memory", 1);
	int r = baton_respond(req, body, strlen(body), OUT_META);
	free(body);
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
	/* stop() runs only when baton says stop; not when the channel closes. */
	stop(&o);
	return r ? 1 : 0;
}
