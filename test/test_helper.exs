# :needs_guards — tests of the capability guards woven in by the relocator
# (per-function redirects, dynamic call rewriting), which are not built
# yet: excluded until they are.
ExUnit.start(exclude: [:slow, :needs_guards])
