# Packaging.cmake: what `cmake --install` puts where besides the three binaries (whose rules
# are beside their targets in hub/, ctl/ and sim/), the man pages, and the Debian package that
# `cmake --build build --target package` makes with CPack: build/twinhub_<version>_amd64.deb.
# The maintainer scripts, conffiles list, copyright, changelog and the packaged configuration
# are in deploy/package/; the README's "Installing the package" says what goes where and why.
#
# Layout: the package's prefix is /usr (CPACK_PACKAGING_INSTALL_PREFIX); /etc/twinhub and the
# unit's /lib/systemd/system are absolute, as the unit itself (ExecStart=/usr/bin/twinhub) is.

set(TWINHUB_PKG_DIR ${PROJECT_SOURCE_DIR}/deploy/package)
set(TWINHUB_SHARE ${CMAKE_INSTALL_DATADIR}/twinhub)
set(TWINHUB_DOC ${CMAKE_INSTALL_DOCDIR})  # share/doc/twinhub

# ---------------------------------------------------------------------------------------------
# Hardening: the binaries are built as Debian builds its own (dpkg-buildflags' defaults plus
# bindnow; lintian's hardening-* checks). Not with the sanitizers, and no _FORTIFY_SOURCE
# without optimisation (glibc warns, and the test build's -Werror would fail).
# ---------------------------------------------------------------------------------------------

set(_harden_default ON)
if(TWINHUB_SANITIZE OR TWINHUB_TSAN OR TWINHUB_FUZZ)
  set(_harden_default OFF)
endif()
option(TWINHUB_HARDEN "Stack protector, _FORTIFY_SOURCE=2, full RELRO (as Debian builds)"
       ${_harden_default})
if(TWINHUB_HARDEN)
  target_compile_options(twinhub_warnings INTERFACE -fstack-protector-strong)
  if(NOT CMAKE_BUILD_TYPE STREQUAL "Debug")
    target_compile_definitions(twinhub_warnings INTERFACE _FORTIFY_SOURCE=2)
  endif()
  target_link_options(twinhub_warnings INTERFACE -Wl,-z,relro -Wl,-z,now)
endif()

# ---------------------------------------------------------------------------------------------
# Man pages: help2man, from each program's --help, with the sections of deploy/package/*.h2m
# ---------------------------------------------------------------------------------------------

find_program(HELP2MAN help2man)
find_program(GZIP gzip)
set(_man_default OFF)
if(HELP2MAN AND GZIP AND NOT TWINHUB_SANITIZE AND NOT TWINHUB_TSAN AND NOT TWINHUB_FUZZ)
  set(_man_default ON)
endif()
option(TWINHUB_MANPAGES "Build the man pages with help2man (part of the package)" ${_man_default})
if(TWINHUB_MANPAGES AND NOT (HELP2MAN AND GZIP))
  message(FATAL_ERROR "TWINHUB_MANPAGES needs help2man and gzip (apt-get install help2man)")
elseif(NOT TWINHUB_MANPAGES)
  message(STATUS "man pages off (help2man not found, or a sanitizer build): the package will "
                 "have none")
endif()

if(TWINHUB_MANPAGES)
  set(_mandir ${CMAKE_BINARY_DIR}/man)
  set(_pages)
  foreach(prog twinhub twinctl twinsim)
    if(prog STREQUAL "twinhub")
      set(what "the MQTT digital-twin hub daemon: device twins in LMDB, rules and models")
    elseif(prog STREQUAL "twinctl")
      set(what "read twinhub's twins, back up its store, check rules and models, send requests")
    else()
      set(what "a simulated fleet of ECG monitors and load generator for twinhub")
    endif()
    # help2man names the page after the file it runs: a copy of the wrapper under prog's name
    configure_file(${TWINHUB_PKG_DIR}/help2man-wrap.sh ${_mandir}/run/${prog} COPYONLY)
    # -n: the NAME line; gzip -n: no name or time in the .gz (reproducible, as lintian wants).
    # help2man takes the date from SOURCE_DATE_EPOCH when it is set.
    add_custom_command(OUTPUT ${_mandir}/${prog}.1.gz
      COMMAND ${CMAKE_COMMAND} -E env TWINHUB_MAN_BIN=$<TARGET_FILE:${prog}>
              ${HELP2MAN} --no-info --version-string=${PROJECT_VERSION} --name=${what}
              --include=${TWINHUB_PKG_DIR}/${prog}.h2m --output=${_mandir}/${prog}.1
              ${_mandir}/run/${prog}
      COMMAND ${GZIP} -9nf ${_mandir}/${prog}.1
      DEPENDS ${prog} ${TWINHUB_PKG_DIR}/${prog}.h2m ${TWINHUB_PKG_DIR}/help2man-wrap.sh
      COMMENT "Generating the man page ${prog}(1)"
      VERBATIM)
    list(APPEND _pages ${_mandir}/${prog}.1.gz)
  endforeach()
  add_custom_target(manpages ALL DEPENDS ${_pages})
  install(FILES ${_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endif()

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

# The service: its unit and its configuration (conffiles, see deploy/package/conffiles).
install(FILES deploy/twinhub.service DESTINATION /lib/systemd/system)
install(FILES ${TWINHUB_PKG_DIR}/twinhub.yaml ${TWINHUB_PKG_DIR}/rules.yaml
        DESTINATION /etc/twinhub)

# /usr/share/twinhub: the examples keep their relative layout (ecg.yaml's model file is
# ../models/hr_forecast.twm); the exporter and the format it writes; the broker's queue
# settings for the hub (the README: copy it to /etc/mosquitto/conf.d/).
install(FILES deploy/rules/ecg.yaml DESTINATION ${TWINHUB_SHARE}/examples/rules)
install(FILES deploy/models/hr_forecast.twm deploy/models/hr_naive.twm deploy/models/README.md
        DESTINATION ${TWINHUB_SHARE}/examples/models)
install(PROGRAMS deploy/models/train_hr_forecast.py DESTINATION ${TWINHUB_SHARE}/examples/models)
install(PROGRAMS twins/models/export.py DESTINATION ${TWINHUB_SHARE}/models)
install(FILES twins/models/FORMAT.md DESTINATION ${TWINHUB_SHARE}/models)
install(FILES deploy/mosquitto-durable.conf DESTINATION ${TWINHUB_SHARE})

# /usr/share/doc/twinhub: the manual (the unit's Documentation=), copyright, changelog.gz (a
# native package's name for it, which lintian checks).
configure_file(${TWINHUB_PKG_DIR}/changelog.in ${CMAKE_BINARY_DIR}/package/changelog @ONLY)
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/package/changelog.gz
  COMMAND ${GZIP} -9nkf ${CMAKE_BINARY_DIR}/package/changelog
  DEPENDS ${CMAKE_BINARY_DIR}/package/changelog
  COMMENT "Compressing the package's changelog"
  VERBATIM)
add_custom_target(package_changelog ALL DEPENDS ${CMAKE_BINARY_DIR}/package/changelog.gz)
install(FILES README.md ${TWINHUB_PKG_DIR}/copyright ${CMAKE_BINARY_DIR}/package/changelog.gz
        DESTINATION ${TWINHUB_DOC})
# Lintian's findings that the package accepts, each with its reason, would go into
# deploy/package/lintian-overrides (installed as usr/share/lintian/overrides/twinhub, and listed
# in the README); there are none: lintian reports no error or warning.
if(EXISTS ${TWINHUB_PKG_DIR}/lintian-overrides)
  install(FILES ${TWINHUB_PKG_DIR}/lintian-overrides
          DESTINATION ${CMAKE_INSTALL_DATADIR}/lintian/overrides RENAME twinhub)
endif()

# ---------------------------------------------------------------------------------------------
# The Debian package (CPack DEB)
# ---------------------------------------------------------------------------------------------

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME twinhub)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "twinhub maintainers")
set(CPACK_PACKAGE_CONTACT "twinhub maintainers <maintainers@users.noreply.b-seed-81b4dedf.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "MQTT digital-twin hub for device fleets")
# The extended description: lines under 80 columns (CPack indents them), a blank line between
# paragraphs (CPack writes " .").
string(CONCAT CPACK_PACKAGE_DESCRIPTION
  "twinhub keeps a live digital twin of every device in a fleet. Devices\n"
  "publish msgpack or JSON telemetry over MQTT; the daemon commits it to each\n"
  "device's twin in LMDB before the broker's acknowledgement, keeps a bounded\n"
  "history, runs the operators' rules and predictive models, and publishes\n"
  "state, desired state, commands, events and predictions back over MQTT.\n"
  "\n"
  "This package holds the daemon (a systemd service with a watchdog,\n"
  "Prometheus metrics and health checks over HTTP), twinctl (reads twins,\n"
  "backs up and restores the store, checks rules, sends requests) and twinsim\n"
  "(a simulated fleet of ECG monitors, also a load generator).\n")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # twinhub_0.1.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Depends: the shared libraries' packages from dpkg-shlibdeps (dpkg-dev), plus adduser for the
# postinst's system user.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "mosquitto")
# mosquitto-clients to watch the topics; python3-* for the model exporter and training script
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "mosquitto-clients, python3, python3-msgpack, python3-sklearn")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${TWINHUB_PKG_DIR}/postinst ${TWINHUB_PKG_DIR}/prerm ${TWINHUB_PKG_DIR}/postrm
  ${TWINHUB_PKG_DIR}/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)  # scripts 0755, conffiles 0644

include(CPack)
