/*
 * The gallery page's server-side rendering (gallery.h): names that would break
 * HTML or a URL come out escaped, folders come first, only videos get a
 * thumbnail, and the breadcrumbs link every level but the last. The browser
 * test (integration/test_gallery.py) checks the same page through the real
 * gateway; this one reads the exact bytes.
 */
#include <setjmp.h> /* cmocka needs these four first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "gallery.h"

static Thumbnail__V1__ListEntry entry(const char *path, int is_dir, uint64_t size)
{
    Thumbnail__V1__ListEntry e = THUMBNAIL__V1__LIST_ENTRY__INIT;
    e.path = (char *)path;
    e.is_dir = is_dir;
    e.size = size;
    return e;
}

static char *render(const char *dir, Thumbnail__V1__ListEntry *es, size_t n, const char *token)
{
    const Thumbnail__V1__ListEntry *ptrs[16];
    char *html = NULL;
    size_t len = 0;
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &es[i];
    assert_int_equal(tn_gallery_render(dir, ptrs, n, token, &html, &len), 0);
    assert_non_null(html);
    assert_int_equal(strlen(html), len);
    return html;
}

/* The text between the listing's <ul id="grid"> and the end of the page's main. */
static const char *listing(const char *html)
{
    const char *s = strstr(html, "<ul id=\"grid\"");
    assert_non_null(s);
    return s;
}

static void test_escaping(void **state)
{
    (void)state;
    Thumbnail__V1__ListEntry es[] = {
        entry("sub dir/a \"q\" 'b' <i>&amp; é#?%.mp4", 0, 1234567),
    };
    char *html = render("sub dir", es, 1, NULL);
    const char *l = listing(html);
    /* the URL: every reserved byte percent-encoded, '/' kept */
    assert_non_null(strstr(l, "data-u=\"sub%20dir/a%20%22q%22%20%27b%27%20%3Ci%3E%26amp%3B%20"
                              "%C3%A9%23%3F%25.mp4\""));
    assert_non_null(strstr(l, "src=\"/v1/thumbnail/sub%20dir/a%20%22q%22%20%27b%27%20%3Ci%3E"
                              "%26amp%3B%20%C3%A9%23%3F%25.mp4.jpg?"));
    /* the text: HTML-escaped, the UTF-8 as it is */
    assert_non_null(strstr(l, ">a &quot;q&quot; &#39;b&#39; &lt;i&gt;&amp;amp; é#?%.mp4</span>"));
    assert_null(strstr(l, "<i>"));
    assert_non_null(strstr(l, "loading=\"lazy\""));
    assert_non_null(strstr(l, "width=\"320\" height=\"180\""));
    assert_non_null(strstr(l, "1.2 MB"));
    /* the title */
    assert_non_null(strstr(html, "<title>sub dir · thumbnail_server</title>"));
    free(html);
}

static void test_order_and_kinds(void **state)
{
    (void)state;
    Thumbnail__V1__ListEntry es[] = {
        entry("b.mp4", 0, 10), entry("notes.txt", 0, 5), entry("Zed", 1, 0),
        entry("a.MKV", 0, 10), entry("alpha", 1, 0),
    };
    char *html = render("", es, 5, NULL);
    const char *l = listing(html);
    const char *alpha = strstr(l, "href=\"/browse/alpha\"");
    const char *zed = strstr(l, "href=\"/browse/Zed\"");
    const char *a = strstr(l, "data-u=\"a.MKV\"");
    const char *b = strstr(l, "data-u=\"b.mp4\"");
    assert_non_null(alpha);
    assert_non_null(zed);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(alpha < zed && zed < a && a < b);
    /* a file that is not a video: listed, no thumbnail asked for */
    assert_non_null(strstr(l, ">notes.txt</span>"));
    assert_null(strstr(l, "notes.txt.jpg"));
    assert_null(strstr(l, "data-u=\"notes.txt\""));
    /* no "more" link without a page token */
    assert_null(strstr(l, "?page="));
    free(html);
}

static void test_crumbs_and_more(void **state)
{
    (void)state;
    char *html = render("a&b/c d/<e>", NULL, 0, "tok/en=");
    const char *nav = strstr(html, "<nav");
    assert_non_null(nav);
    assert_non_null(strstr(nav, "<a href=\"/\">Media</a>"));
    assert_non_null(strstr(nav, "<a href=\"/browse/a%26b\">a&amp;b</a>"));
    assert_non_null(strstr(nav, "<a href=\"/browse/a%26b/c%20d\">c d</a>"));
    assert_non_null(strstr(nav, "<span aria-current=\"page\">&lt;e&gt;</span>"));
    assert_non_null(strstr(html, "This folder is empty."));
    assert_non_null(strstr(html, "href=\"/browse/a%26b/c%20d/%3Ce%3E?page=tok/en%3D\""));
    free(html);

    html = render("", NULL, 0, NULL);
    assert_non_null(strstr(html, "<span aria-current=\"page\">Media</span>"));
    assert_null(strstr(html, "<!--tn:")); /* every marker filled */
    free(html);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_order_and_kinds),
        cmocka_unit_test(test_crumbs_and_more),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
