package caddymodule

import "time"

// SetBodyReadTimeoutForTest shortens the gateway's own bound on reading a
// request body, so that the slow-body tests need not wait 10 s. It returns
// the function that restores the previous bound.
func SetBodyReadTimeoutForTest(d time.Duration) (restore func()) {
	old := bodyReadTimeout.Swap(int64(d))
	return func() { bodyReadTimeout.Store(old) }
}
