package initiator

import (
	"context"
	"time"
)

// withLoginTimeout runs f under ctx bounded by d when d is positive.
func withLoginTimeout[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	if d <= 0 {
		return f(ctx)
	}
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(lctx)
}

// fewerConnections returns how many connections a session gets: asked
// (at least 1), or fewer when the target's negotiated MaxConnections
// allows fewer. A MaxConnections below 1 (a target that did not say) is
// taken as no limit: adding a connection then fails if it refuses.
func fewerConnections(asked, maxConnections int) int {
	asked = max(asked, 1)
	if maxConnections >= 1 && maxConnections < asked {
		return maxConnections
	}
	return asked
}
