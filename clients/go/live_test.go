package hevlayer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLive runs the shared live scenario against the real gateway and local store (sdk/live_stack.py): write,
// query, fetch (a cache hit on the second call), mint a key and use it; then the gateway dies and a simple vector
// query falls through to the store (the same rows, Fallback == "turbopuffer_direct") while a fetch fails fast.
func TestLive(t *testing.T) {
	if _, err := os.Stat(filepath.Join(sdkDir, "live_stack.py")); err != nil {
		t.Skip("sdk/live_stack.py not found (the client is tested from the Layer repository)")
	}
	var info map[string]string
	_, send := startHelper(t, "live_stack.py", &info)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := fmt.Sprintf("live-go-%d", time.Now().UnixNano())
	client := NewClient(WithBaseURL(info["gateway"]), WithAPIKey(info["key"]), WithTurbopufferAPIURL(info["store"]),
		WithTurbopufferAPIKey(info["key"]), WithLogger(t.Logf))

	written, err := client.WriteNamespace(ctx, ns, TurbopufferWriteRequest{
		"distance_metric": "cosine_distance",
		"upsert_rows": []map[string]interface{}{
			{"id": "a", "vector": []float64{1, 0}, "title": "one"},
			{"id": "b", "vector": []float64{0.8, 0.2}, "title": "two"},
			{"id": "c", "vector": []float64{0, 1}, "title": "three"},
		},
	})
	if err != nil || written.RowsAffected != 3 {
		t.Fatalf("write: %v %+v", err, written)
	}
	topK := int64(2)
	query := &QueryRequest{Vector: []float64{1, 0}, TopK: &topK, IncludeAttributes: []string{"title"}}
	before, err := client.QueryNamespaceWithPerf(ctx, ns, query, nil)
	if err != nil || before.Perf.Fallback != nil {
		t.Fatalf("query: %v %+v", err, before)
	}
	if got := rows(before.Data.Rows); !strings.HasPrefix(got, "a:") || !strings.Contains(got, ",b:") {
		t.Fatalf("query rows: %s", got)
	}
	fetch := &FetchDocumentParams{IncludeAttributes: []string{"title"}}
	if _, err := client.FetchDocument(ctx, ns, "a", fetch); err != nil {
		t.Fatal(err)
	}
	second, err := client.FetchDocumentWithPerf(ctx, ns, "a", fetch)
	if err != nil || second.Perf.CacheStatus == nil || *second.Perf.CacheStatus != "hit" || second.Data.Attributes["title"] != "one" {
		t.Fatalf("second fetch: %v %+v", err, second)
	}

	expires := "1h"
	minted, err := client.MintKey(ctx, &MintKeyRequest{Name: "live-reader", ExpiresAfter: &expires,
		Entitlements: map[string]ApiKeyEntitlement{"vectorstore.default": {Scopes: []string{"read"}, Namespaces: []string{ns}}}})
	if err != nil {
		t.Fatal(err)
	}
	reader := NewClient(WithBaseURL(info["gateway"]), WithAPIKey(minted.Token), WithFallbackToTurbopuffer(false))
	read, err := reader.QueryNamespace(ctx, ns, query, nil)
	if err != nil || rows(read.Rows) != rows(before.Data.Rows) {
		t.Fatalf("query with the minted key: %v %+v", err, read)
	}
	_, err = reader.WriteNamespace(ctx, ns, TurbopufferWriteRequest{"upsert_rows": []map[string]interface{}{{"id": "x"}}})
	var denied *HevlayerError
	if !errors.As(err, &denied) || denied.StatusCode != 403 || denied.Kind != "forbidden" {
		t.Fatalf("write with a read key: %v", err)
	}

	send("kill-gateway")
	after, err := client.QueryNamespaceWithPerf(ctx, ns, query, nil)
	if err != nil || after.Perf.Fallback == nil || *after.Perf.Fallback != TurbopufferDirect {
		t.Fatalf("query after the gateway died: %v %+v", err, after)
	}
	if rows(after.Data.Rows) != rows(before.Data.Rows) {
		t.Fatalf("fall-through rows %s != gateway rows %s", rows(after.Data.Rows), rows(before.Data.Rows))
	}
	_, err = client.FetchDocument(ctx, ns, "a", nil)
	var unreachable *GatewayUnreachableError
	if !errors.Is(err, ErrGatewayUnreachable) || !errors.As(err, &unreachable) || !strings.Contains(unreachable.Reason, "Layer-only") {
		t.Fatalf("fetch after the gateway died: %v", err)
	}
}

func rows(in []map[string]interface{}) string {
	parts := make([]string, 0, len(in))
	for _, r := range in {
		dist, _ := r["$dist"].(float64)
		parts = append(parts, fmt.Sprintf("%v:%.6f:%v", r["id"], math.Round(dist*1e6)/1e6, r["title"]))
	}
	return strings.Join(parts, ",")
}
