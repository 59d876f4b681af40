defmodule Sandbox.Config do
  @moduledoc """
  Validation of `Sandbox.create_sandbox/3`'s options, and the security
  profiles' defaults.

  Options whose behaviour is not built yet are refused with
  `{:error, {:not_yet_supported, option}}` when given a non-default value:
  `:resource_limits` (the runtime budget). Security profiles are resolved by
  `Sandbox.SecurityController.resolve/1`.

  ## Resource limits

  `:resource_limits` may give any subset of `max_memory` (bytes),
  `max_processes`, `max_execution_time` (ms), `max_file_size` (bytes) and
  `max_cpu_percentage` (a number, 100.0 = one scheduler); the others come
  from the security profile (`limits/1`). Integers must be positive, the
  CPU percentage a positive number (kept as a float). A bad entry is
  `{:invalid_option, {:resource_limits, {key, value}}}` (an unknown key
  too), anything but a map `{:invalid_option, {:resource_limits, value}}`.
  They are enforced by `Sandbox.ResourceMonitor`.
  """

  @mib 1024 * 1024

  @limits %{
    high: %{
      max_memory: 64 * @mib,
      max_processes: 50,
      max_execution_time: 60_000,
      max_file_size: 16 * @mib,
      max_cpu_percentage: 25.0
    },
    medium: %{
      max_memory: 128 * @mib,
      max_processes: 100,
      max_execution_time: 300_000,
      max_file_size: 64 * @mib,
      max_cpu_percentage: 50.0
    },
    low: %{
      max_memory: 256 * @mib,
      max_processes: 200,
      max_execution_time: 600_000,
      max_file_size: 256 * @mib,
      max_cpu_percentage: 100.0
    }
  }

  @compile_limits %{max_memory: 1024 * @mib, max_file_size: 64 * @mib, max_processes: 64}

  @defaults [
    supervisor_args: [],
    compile_timeout: 30_000,
    security_profile: :medium,
    auto_reload: false,
    state_migration: nil,
    max_restarts: 3,
    max_seconds: 5,
    max_versions: 10,
    capture_output: false,
    isolation: :vm,
    keep_atoms: []
  ]

  @type t :: %{
          sandbox_path: String.t(),
          supervisor_args: term,
          compile_timeout: pos_integer,
          compile_limits: map,
          resource_limits: map,
          security_profile: map,
          auto_reload: boolean,
          state_migration: (term -> term) | (term, term, term -> term) | nil,
          max_restarts: non_neg_integer,
          max_seconds: pos_integer,
          max_versions: pos_integer,
          capture_output: boolean,
          isolation: :vm | :node,
          keep_atoms: [atom]
        }

  @doc "The security profile map of a profile name (see `Sandbox.SecurityController`)."
  @spec profile(:high | :medium | :low) :: map
  def profile(name), do: Sandbox.SecurityController.profile(name)

  @doc "The default resource limits of a profile name."
  @spec limits(:high | :medium | :low) :: map
  def limits(name), do: Map.fetch!(@limits, name)

  @doc """
  How a sandbox's compiles are confined (`Sandbox.IsolatedCompiler`'s
  `:confine` option), from its security profile (a name or a resolved
  profile map, by its `isolation_level`): `:high` → `:required` (a compile,
  and so the create, is refused with `{:error, {:confinement_unavailable,
  reason}}` where the kernel cannot confine compile workers), `:medium` →
  `:preferred` (confined where possible; otherwise the compile goes on, and
  the missing confinement is logged once and reported in the compile's
  `confinement`), `:low` → `:none`.
  """
  @spec compile_confinement(:high | :medium | :low | map) :: :required | :preferred | :none
  def compile_confinement(%{isolation_level: level}), do: compile_confinement(level)
  def compile_confinement(:high), do: :required
  def compile_confinement(:medium), do: :preferred
  def compile_confinement(:low), do: :none

  @doc """
  Validates create options. Returns `{:ok, config}` or `{:error, reason}`:
  `{:missing_option, :sandbox_path}`, `{:unknown_option, key}`,
  `{:invalid_option, {key, value}}` or `{:not_yet_supported, key}`.
  Raises `ArgumentError` when `opts` is not a keyword list.
  """
  @spec validate(keyword) :: {:ok, t} | {:error, term}
  def validate(opts) do
    unless Keyword.keyword?(opts),
      do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}")

    known = [:sandbox_path, :resource_limits, :compile_limits | Keyword.keys(@defaults)]

    with :ok <- unknown(opts, known),
         {:ok, path} <- fetch_path(opts) do
      config =
        @defaults
        |> Keyword.merge(opts)
        |> Map.new()
        |> Map.put(:sandbox_path, path)

      Enum.reduce_while(
        [
          &check_supervisor_args/1,
          &check_compile_timeout/1,
          &check_profile/1,
          &check_resource_limits/1,
          &check_compile_limits/1,
          &check_auto_reload/1,
          &check_migration/1,
          &check_restarts/1,
          &check_versions/1,
          &check_capture/1,
          &check_isolation/1,
          &check_keep_atoms/1
        ],
        {:ok, config},
        fn check, {:ok, config} ->
          case check.(config) do
            {:ok, config} -> {:cont, {:ok, config}}
            error -> {:halt, error}
          end
        end
      )
    end
  end

  @reload_defaults [state_migration: :config, suspend_timeout: 5_000, rollback_window: 0]

  @doc """
  Validates hot reload options (see `Sandbox.hot_reload_sandbox/3`):
  `{:ok, opts}` with the defaults filled in (`state_migration: :config`
  means the create option's), or `{:error, {:unknown_option, key}}` /
  `{:error, {:invalid_option, {key, value}}}`. Raises `ArgumentError` when
  `opts` is not a keyword list.
  """
  @spec reload_options(keyword) :: {:ok, keyword} | {:error, term}
  def reload_options(opts) do
    unless Keyword.keyword?(opts),
      do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}")

    with :ok <- unknown(opts, Keyword.keys(@reload_defaults)) do
      opts = Keyword.merge(@reload_defaults, opts)

      Enum.find_value(opts, {:ok, opts}, fn
        {:state_migration, f} when f == :config or is_nil(f) -> nil
        {:state_migration, f} when is_function(f, 1) or is_function(f, 3) -> nil
        {:suspend_timeout, t} when is_integer(t) and t > 0 -> nil
        {:rollback_window, t} when is_integer(t) and t >= 0 -> nil
        {key, value} -> invalid(key, value)
      end)
    end
  end

  defp unknown(opts, known) do
    case Enum.find(Keyword.keys(opts), &(&1 not in known)) do
      nil -> :ok
      key -> {:error, {:unknown_option, key}}
    end
  end

  defp fetch_path(opts) do
    case Keyword.fetch(opts, :sandbox_path) do
      {:ok, path} when is_binary(path) -> {:ok, Path.expand(path)}
      {:ok, other} -> invalid(:sandbox_path, other)
      :error -> {:error, {:missing_option, :sandbox_path}}
    end
  end

  defp check_supervisor_args(config), do: {:ok, config}

  defp check_compile_timeout(%{compile_timeout: t} = config) when is_integer(t) and t > 0,
    do: {:ok, config}

  defp check_compile_timeout(%{compile_timeout: t}), do: invalid(:compile_timeout, t)

  defp check_profile(%{security_profile: p} = config) do
    with {:ok, profile} <- Sandbox.SecurityController.resolve(p),
         do: {:ok, %{config | security_profile: profile}}
  end

  # The profile for limits is the one given (only :medium is accepted for
  # now, see check_profile/1).
  defp check_resource_limits(config) do
    defaults = limits(:medium)

    case Map.get(config, :resource_limits, %{}) do
      given when is_map(given) ->
        case Enum.find(given, &(not valid_limit?(&1))) do
          nil ->
            given = Map.new(given, fn {k, v} -> {k, normalise_limit(k, v)} end)
            {:ok, Map.put(config, :resource_limits, Map.merge(defaults, given))}

          entry ->
            invalid(:resource_limits, entry)
        end

      other ->
        invalid(:resource_limits, other)
    end
  end

  @integer_limits [:max_memory, :max_processes, :max_execution_time, :max_file_size]

  defp valid_limit?({k, v}) when k in @integer_limits, do: is_integer(v) and v > 0
  defp valid_limit?({:max_cpu_percentage, v}), do: is_number(v) and v > 0
  defp valid_limit?(_), do: false

  defp normalise_limit(:max_cpu_percentage, v), do: v / 1
  defp normalise_limit(_k, v), do: v

  defp check_compile_limits(config) do
    case Map.get(config, :compile_limits, %{}) do
      limits when is_map(limits) ->
        valid? =
          Enum.all?(limits, fn {k, v} ->
            k in Map.keys(@compile_limits) and is_integer(v) and v > 0
          end)

        if valid?,
          do: {:ok, Map.put(config, :compile_limits, Map.merge(@compile_limits, limits))},
          else: invalid(:compile_limits, limits)

      other ->
        invalid(:compile_limits, other)
    end
  end

  defp check_auto_reload(%{auto_reload: a} = config) when is_boolean(a), do: {:ok, config}
  defp check_auto_reload(%{auto_reload: other}), do: invalid(:auto_reload, other)

  defp check_migration(%{state_migration: f} = config)
       when is_nil(f) or is_function(f, 1) or is_function(f, 3),
       do: {:ok, config}

  defp check_migration(%{state_migration: f}), do: invalid(:state_migration, f)

  defp check_restarts(%{max_restarts: r, max_seconds: s} = config)
       when is_integer(r) and r >= 0 and is_integer(s) and s > 0,
       do: {:ok, config}

  defp check_restarts(%{max_restarts: r, max_seconds: s}) do
    if is_integer(r) and r >= 0, do: invalid(:max_seconds, s), else: invalid(:max_restarts, r)
  end

  defp check_versions(%{max_versions: v} = config) when is_integer(v) and v > 0, do: {:ok, config}
  defp check_versions(%{max_versions: v}), do: invalid(:max_versions, v)

  defp check_capture(%{capture_output: c} = config) when is_boolean(c), do: {:ok, config}
  defp check_capture(%{capture_output: c}), do: invalid(:capture_output, c)

  # isolation: :node runs the sandbox in a VM of its own (Sandbox.Node).
  defp check_isolation(%{isolation: i} = config) when i in [:vm, :node], do: {:ok, config}
  defp check_isolation(%{isolation: i}), do: invalid(:isolation, i)

  # keep_atoms: atoms the relocation keeps as data (Sandbox.Beam.relocate/4).
  defp check_keep_atoms(%{keep_atoms: atoms} = config) when is_list(atoms) do
    if not List.improper?(atoms) and Enum.all?(atoms, &is_atom/1),
      do: {:ok, %{config | keep_atoms: Enum.uniq(atoms)}},
      else: invalid(:keep_atoms, atoms)
  end

  defp check_keep_atoms(%{keep_atoms: atoms}), do: invalid(:keep_atoms, atoms)

  defp invalid(key, value), do: {:error, {:invalid_option, {key, value}}}
end
