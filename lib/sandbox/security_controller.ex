defmodule Sandbox.SecurityController do
  @moduledoc """
  Security profiles, the classification of a sandbox's code, run-time
  violations and the audit log (the seed's `Sandbox.SecurityController`).

  ## Threat model

  Under `:high` and `:medium` a sandbox's code — including its compile-time
  code — is untrusted: it must not stop, change or read the host beyond its
  profile. It may crash itself. Under `:low` (`allowed_operations: [:all]`)
  nothing is restricted, but membership, limits and the audit log still
  apply.

  ## Profiles

  | profile | `allowed_operations` | `audit_level` |
  |---|---|---|
  | `:high` | `:basic_otp`, `:math`, `:string` | `:full` |
  | `:medium` (default) | `:basic_otp`, `:math`, `:string`, `:file_read`, `:network_client`, `:code_load` | `:basic` |
  | `:low` | `:all` | `:basic` |

  (The seed lists `[:basic_otp, :file_read, :network_client]` for `:medium`;
  pure arithmetic and string functions are in `:math` and `:string`, which
  `:medium` needs as much as `:high`.) A map profile takes the keys
  `isolation_level` (`:high | :medium | :low`, the base), `allowed_operations`,
  `restricted_modules` (modules refused whatever their class),
  `allowed_modules` (modules allowed whatever their class) and
  `audit_level` (`:full | :basic | :none`).

  ## How code is held to its profile

  Every call a sandbox's code makes is classified when the code is loaded
  (`Sandbox.SecurityController.Operations`): allowed calls stay, guarded
  calls are redirected to the sandbox's guard (`Sandbox.Guard`), which
  checks their arguments at run time, and a forbidden call refuses the
  create or reload with `{:error, {:security_violation, [violation]}}`,
  `violation = %{caller: {m, f, a}, line: n | nil, target: {m, f, a},
  class: atom}` (original names). Dynamic calls (`apply`, funs, `send`)
  go through the guard as well. A violation at run time raises
  `Sandbox.SecurityError` in the caller, emits
  `[:sandbox, :security, :violation]`, and appends an audit line; under
  `:high` the sandbox is also stopped (`error: {:security_violation,
  detail}`).

  ## Audit log

  JSON lines through the supervising C-node (`Sandbox.CNode.audit/2`), one
  object per event with `ts`, `sandbox_id`, `event` and its fields:
  `created`, `destroyed`, `reload`, `rollback`, `refused` and `violation`
  (`audit_level: :basic`), plus every guarded call decision (`:full`). A
  refusal or violation is on disk (fsync) before the operation returns; the
  others are written asynchronously, in batches (one fsync for many), so
  that they cost the operation nothing.
  """

  use GenServer

  alias Sandbox.Guard.Runtime
  alias Sandbox.SecurityController.Operations

  @classes [
    :basic_otp,
    :math,
    :string,
    :file_read,
    :file_write,
    :network_client,
    :code_load,
    :all
  ]

  @profiles %{
    high: %{
      isolation_level: :high,
      allowed_operations: [:basic_otp, :math, :string],
      restricted_modules: [],
      allowed_modules: [],
      audit_level: :full
    },
    medium: %{
      isolation_level: :medium,
      allowed_operations: [:basic_otp, :math, :string, :file_read, :network_client, :code_load],
      restricted_modules: [],
      allowed_modules: [],
      audit_level: :basic
    },
    low: %{
      isolation_level: :low,
      allowed_operations: [:all],
      restricted_modules: [],
      allowed_modules: [],
      audit_level: :basic
    }
  }

  @typedoc "A resolved security profile."
  @type profile :: %{
          isolation_level: :high | :medium | :low,
          allowed_operations: [atom],
          restricted_modules: [module],
          allowed_modules: [module],
          audit_level: :full | :basic | :none
        }

  @typedoc """
  A dynamic call with more arguments than the guard takes: `mod.fun(...)`
  with a computed module or function (`kind: :apply`) or `fun.(...)`
  (`kind: :call_fun`), with over #{32} arguments (original names).
  """
  @type wide_site :: %{
          caller: {module, atom | nil, arity | nil},
          line: pos_integer | nil,
          kind: :apply | :call_fun,
          arity: non_neg_integer
        }

  @typedoc "A forbidden or guarded call site (original names)."
  @type violation :: %{
          caller: {module, atom | nil, arity | nil},
          line: pos_integer | nil,
          target: mfa,
          class: atom
        }

  ## Profiles

  @doc """
  The profile for `:high`, `:medium`, `:low` or a map (see the module
  documentation): `{:ok, profile}` or `{:error, {:invalid_option,
  {:security_profile, value}}}`.
  """
  @spec resolve(atom | map) :: {:ok, profile} | {:error, term}
  def resolve(name) when is_map_key(@profiles, name), do: {:ok, Map.fetch!(@profiles, name)}

  def resolve(%{} = map) do
    base = Map.get(map, :isolation_level, :medium)
    keys = [:isolation_level | Map.keys(@profiles.high)]

    with true <- is_map_key(@profiles, base),
         [] <- Map.keys(map) -- keys,
         profile = Map.merge(@profiles[base], Map.take(map, keys)),
         true <- valid_profile?(profile) do
      {:ok, profile}
    else
      _ -> {:error, {:invalid_option, {:security_profile, map}}}
    end
  end

  def resolve(other), do: {:error, {:invalid_option, {:security_profile, other}}}

  defp valid_profile?(p) do
    is_list(p.allowed_operations) and Enum.all?(p.allowed_operations, &(&1 in @classes)) and
      is_list(p.restricted_modules) and Enum.all?(p.restricted_modules, &is_atom/1) and
      is_list(p.allowed_modules) and Enum.all?(p.allowed_modules, &is_atom/1) and
      p.audit_level in [:full, :basic, :none]
  end

  @doc "The profile named `name` (`:high`, `:medium` or `:low`)."
  @spec profile(:high | :medium | :low) :: profile
  def profile(name), do: Map.fetch!(@profiles, name)

  @doc """
  The decision for a call of `{m, f, a}` (a host function) under `profile`:
  `:allowed`, `{:guarded, checks}` or `{:forbidden, class}`.
  """
  @spec verdict(profile, mfa) :: :allowed | {:guarded, [term]} | {:forbidden, atom}
  def verdict(profile, {m, _f, _a} = mfa) do
    ops = profile.allowed_operations

    cond do
      :all in ops -> :allowed
      m in profile.restricted_modules -> {:forbidden, :restricted}
      m in profile.allowed_modules -> :allowed
      true -> class_verdict(Operations.classify(mfa), ops)
    end
  end

  defp class_verdict({class, verdict}, ops) do
    cond do
      class not in ops -> {:forbidden, class}
      verdict == :forbidden -> {:forbidden, class}
      true -> verdict
    end
  end

  ## Classifying code

  @doc """
  Classifies the call sites of a sandbox's modules under `profile`.

  `modules` is `[{original_module, beam, parsed}]`; `own` the set of the
  sandbox's original module names (calls between them are the sandbox's
  own business). Returns `%{violations: [violation], guarded: [violation],
  redirects: %{mfa => guard_function}, too_wide: [wide_site]}`: the
  forbidden sites, the guarded sites, the redirects relocation applies, and
  the dynamic calls with more arguments than the guard takes (see
  `t:wide_site/0`).
  """
  @spec classify([{module, binary, Sandbox.Beam.t()}], MapSet.t(), profile) :: %{
          violations: [violation],
          guarded: [violation],
          redirects: %{mfa => atom},
          too_wide: [wide_site]
        }
  def classify(modules, own, profile) do
    all =
      for {module, beam, parsed} <- modules,
          site <- call_sites(beam, parsed),
          do: Map.put(site, :caller, caller(module, site.caller))

    {dynamic, static} = Enum.split_with(all, &match?({_kind, _arity}, &1.target))
    max = Sandbox.Guard.max_dynamic_arity()

    too_wide =
      for %{target: {kind, arity}} = site <- dynamic,
          arity > max,
          uniq: true,
          do: %{caller: site.caller, line: site.line, kind: kind, arity: arity}

    sites =
      for site <- static,
          {m, _f, _a} = site.target,
          not MapSet.member?(own, m),
          m not in [Application, :application],
          do: site

    init = %{violations: [], guarded: [], redirects: %{}, too_wide: too_wide}

    Enum.reduce(sites, init, fn site, acc ->
      case verdict(profile, site.target) do
        # Allowed (a profile with :all), but a guarded function whose
        # checks map the sandbox's module names: through the guard all
        # the same (isolation fidelity), not reported as guarded.
        :allowed ->
          if Runtime.always_checked?(site.target),
            do: %{
              acc
              | redirects: Map.put(acc.redirects, site.target, Runtime.guard_name(site.target))
            },
            else: acc

        {:guarded, _} ->
          entry = site_entry(site, guarded_class(site.target))

          %{
            acc
            | guarded: [entry | acc.guarded],
              redirects: Map.put(acc.redirects, site.target, Runtime.guard_name(site.target))
          }

        # Code loading the profile lacks: the module still loads, and the
        # guard refuses the call at run time (Sandbox.SecurityError).
        {:forbidden, :code_load} ->
          %{
            acc
            | guarded: [site_entry(site, :code_load) | acc.guarded],
              redirects: Map.put(acc.redirects, site.target, Runtime.guard_name(site.target))
          }

        {:forbidden, class} ->
          %{acc | violations: [site_entry(site, class) | acc.violations]}
      end
    end)
    |> Map.update!(:violations, &Enum.sort(Enum.uniq(&1)))
    |> Map.update!(:guarded, &Enum.sort(Enum.uniq(&1)))
  end

  defp guarded_class(mfa), do: elem(Operations.classify(mfa), 0)

  defp site_entry(site, class),
    do: %{caller: site.caller, line: site.line, target: site.target, class: class}

  defp caller(module, {f, a}), do: {module, f, a}
  defp caller(module, nil), do: {module, nil, nil}

  # Call sites: imports (remote calls) and external fun literals, and the
  # dynamic calls (target `{:apply | :call_fun, arity}`). With the native
  # call-site decoder each site carries its calling function and line.
  defp call_sites(beam, parsed) do
    case native_call_sites(beam) do
      {:ok, sites} ->
        for %{kind: kind, target: target} = s <- sites,
            kind in [:call, :fun, :apply, :call_fun],
            do: %{caller: s.caller, line: s.line, target: target}

      :unavailable ->
        for target <- Enum.uniq(parsed.imports ++ parsed.external_funs),
            do: %{caller: nil, line: nil, target: target}
    end
  end

  defp native_call_sites(beam) do
    if function_exported?(Sandbox.Beam, :call_sites, 1) do
      case Kernel.apply(Sandbox.Beam, :call_sites, [beam]) do
        {:ok, sites} -> {:ok, sites}
        {:error, _} -> :unavailable
      end
    else
      :unavailable
    end
  end

  @doc """
  What a create under `profile` would refuse, and every guarded call site:
  `{:ok, %{violations: [violation], guarded: [violation]}}`.

  `source` is a project directory (compiled in a compile worker, as a
  create would) or a list of BEAMs. Errors: the compiler's,
  `{:invalid_beam, module | nil, reason}`, and the profile's
  `{:invalid_option, {:security_profile, value}}`.
  """
  @spec scan(Path.t() | [binary], atom | map) ::
          {:ok, %{violations: [violation], guarded: [violation]}} | {:error, term}
  def scan(source, profile \\ :medium)

  def scan(path, profile) when is_binary(path) do
    case Sandbox.IsolatedCompiler.compile_sandbox(path, write_artifacts: false) do
      {:ok, info} -> scan(Enum.map(info.modules, &elem(&1, 1)), profile)
      {:error, _} = error -> error
    end
  end

  def scan(beams, profile) when is_list(beams) do
    with {:ok, profile} <- resolve(profile),
         {:ok, modules} <- parse_all(beams) do
      own = MapSet.new(modules, &elem(&1, 0))
      result = classify(modules, own, profile)
      {:ok, Map.take(result, [:violations, :guarded])}
    end
  end

  def scan(other, _profile),
    do: raise(ArgumentError, "expected a path or a list of BEAMs, got: #{inspect(other)}")

  defp parse_all(beams) do
    Enum.reduce_while(beams, {:ok, []}, fn beam, {:ok, acc} ->
      with true <- is_binary(beam) || {:error, {:invalid_beam, nil, :not_a_binary}},
           {:ok, parsed} <- Sandbox.Beam.parse(beam) do
        {:cont, {:ok, [{parsed.module, beam, parsed} | acc]}}
      else
        {:error, {:invalid_beam, _, _}} = error -> {:halt, error}
        {:error, reason} -> {:halt, {:error, {:invalid_beam, nil, reason}}}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  ## Sandboxes

  @doc """
  Registers sandbox `id`'s profile and limits for its guard (at create).
  """
  @spec register(String.t(), profile, map) :: :ok
  def register(id, profile, limits) do
    key = String.to_atom(id)

    :ets.insert(Runtime.table(), [
      {{:profile, key}, profile},
      {{:limits, key}, Map.take(limits, [:max_file_size, :max_atoms])}
    ])

    :ok
  end

  @doc "Forgets sandbox `id` (at destroy)."
  @spec unregister(String.t()) :: :ok
  def unregister(id) do
    key = String.to_atom(id)
    for k <- [:profile, :limits, :atoms], do: :ets.delete(Runtime.table(), {k, key})
    :ok
  end

  @doc false
  # A run-time violation (from the guard): audit, then under :high the
  # sandbox stops (Sandbox.ErrorHandler's :isolate).
  def violation(id, detail) do
    profile = Runtime.profile(String.to_atom(id))
    audit(id, :violation, detail, profile)

    context =
      Sandbox.ErrorHandler.context(id, :run, :security, %{profile: profile.isolation_level})

    case Sandbox.ErrorHandler.handle_error({:security_violation, detail}, context) do
      {:ok, :isolate} -> stop_after(id, detail.pid, {:security_violation, detail})
      _ -> :ok
    end

    :ok
  end

  # The sandbox stops once the violating process is done with the
  # Sandbox.SecurityError (it is raised there after this returns): when
  # that process exits (a `Sandbox.call/5`'s process has then reported the
  # error to its caller), or after @stop_grace ms if it rescued the error
  # and runs on. Stopping at once would kill it before the error reached
  # anyone. This server waits; without it, the stop is immediate.
  defp stop_after(id, pid, reason) do
    case Process.whereis(__MODULE__) do
      nil -> security_stop(id, reason)
      server -> send(server, {:stop_after, id, pid, reason})
    end
  end

  defp security_stop(id, reason) do
    with {:ok, pid, _} <- Sandbox.Manager.lookup(id),
         do: GenServer.cast(pid, {:security_stop, reason})

    :ok
  end

  ## Audit

  @doc """
  Appends an audit line for sandbox `id`: `event` (such as `:created`,
  `:destroyed`, `:reloaded`, `:refused`, `:violation`) and its fields,
  unless the profile's `audit_level` is `:none`. Returns once the line is
  on disk; `{:error, reason}` when the audit log cannot be written (the
  operation goes on, the failure is logged).
  """
  @spec audit(String.t(), atom, map, profile | nil) :: :ok | {:error, term}
  def audit(id, event, fields, profile \\ nil) do
    level = if profile, do: profile.audit_level, else: :basic

    if level == :none do
      :ok
    else
      line = Map.merge(fields, %{sandbox_id: id, event: event})

      case Sandbox.CNode.audit(line) do
        :ok ->
          :ok

        {:error, reason} = error ->
          require Logger
          Logger.warning("sandbox audit log: #{inspect(reason)} (#{event} of #{id})")
          error
      end
    end
  catch
    :exit, reason -> {:error, {:cnode, reason}}
  end

  @doc """
  Like `audit/4`, but returns at once: the line is written asynchronously,
  in a batch, by this module's server (lifecycle events, guarded call
  decisions).
  """
  @spec audit_async(String.t(), atom, map, profile | nil) :: :ok
  def audit_async(id, event, fields, profile \\ nil) do
    if profile == nil or profile.audit_level != :none,
      do: send(__MODULE__, {:line, Map.merge(fields, %{sandbox_id: id, event: event})})

    :ok
  end

  defp safe_audit(line) do
    Sandbox.CNode.audit(line)
  catch
    :exit, _ -> :ok
  end

  ## Server (batched audit of guarded call decisions)

  @doc false
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc false
  def child_spec(opts), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @max_pending 10_000
  @stop_grace 1_000

  @impl true
  def init(_opts), do: {:ok, %{pending: [], count: 0, dropped: 0, stops: %{}}}

  @impl true
  # Beyond @max_pending lines waiting, decisions are counted, not kept.
  def handle_info({:line, _line}, %{count: n} = state) when n >= @max_pending,
    do: {:noreply, %{state | dropped: state.dropped + 1}}

  def handle_info({:line, line}, state) do
    if state.pending == [], do: send(self(), :flush)
    {:noreply, %{state | pending: [line | state.pending], count: state.count + 1}}
  end

  # The lines go to the C-node concurrently, so that one fsync there covers
  # many of them.
  def handle_info(:flush, state) do
    state.pending
    |> Enum.reverse()
    |> Task.async_stream(&safe_audit/1, max_concurrency: 32, ordered: false)
    |> Stream.run()

    {:noreply, %{state | pending: [], count: 0}}
  end

  # Security stops (see stop_after/3): one per sandbox at a time.
  def handle_info({:stop_after, id, _pid, _reason}, state) when is_map_key(state.stops, id),
    do: {:noreply, state}

  def handle_info({:stop_after, id, pid, reason}, state) do
    ref = Process.monitor(pid)

    # Gone already (this server was busy): at once, not after a :noproc
    # that would queue behind whatever came meanwhile.
    if Process.alive?(pid) do
      timer = Process.send_after(self(), {:stop_now, ref}, @stop_grace)
      {:noreply, %{state | stops: Map.put(state.stops, id, {ref, timer, reason})}}
    else
      Process.demonitor(ref, [:flush])
      security_stop(id, reason)
      {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, _}, state), do: {:noreply, stop_now(state, ref)}
  def handle_info({:stop_now, ref}, state), do: {:noreply, stop_now(state, ref)}

  def handle_info(_other, state), do: {:noreply, state}

  defp stop_now(state, ref) do
    case Enum.find(state.stops, fn {_id, {r, _, _}} -> r == ref end) do
      {id, {ref, timer, reason}} ->
        Process.demonitor(ref, [:flush])
        Process.cancel_timer(timer)
        security_stop(id, reason)
        %{state | stops: Map.delete(state.stops, id)}

      nil ->
        state
    end
  end
end
